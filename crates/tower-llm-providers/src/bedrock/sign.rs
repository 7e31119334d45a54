//! AWS Signature Version 4 for Bedrock requests, with `aws-sigv4`.
//!
//! [`AwsCredentials`] hold an access key id, a secret access key and, for temporary
//! credentials, a session token; the secret and the token are [`ApiKey`]s, so they print as
//! `ApiKey(****)` and never reach a `Debug` output, an error or a log. They are given in code
//! or read from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). [`SigV4Signer`] adds the region (given, or
//! `AWS_REGION` then `AWS_DEFAULT_REGION`) and the service (`bedrock`), and signs an
//! `http::Request` with its body: `authorization`, `x-amz-date`, `x-amz-security-token` with a
//! session token, and `x-amz-content-sha256` when [asked for](SigV4Signer::content_sha256_header)
//! (S3's habit; Bedrock does not need it). The headers carrying secrets are marked sensitive.
//!
//! Sign last: the signature covers the method, the URI, every header present when signing
//! and the body, so a header added afterwards is simply not signed, but a changed body or URI
//! is refused by AWS.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use tower_llm_providers::bedrock::sign::{AwsCredentials, SigV4Signer};
//!
//! let credentials = AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
//! let signer = SigV4Signer::new(credentials, "us-east-1").unwrap();
//! let body = br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#;
//! let mut request = http::Request::post(
//!     "https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-micro-v1%3A0/converse",
//! )
//! .header("content-type", "application/json")
//! .body(())
//! .unwrap();
//! let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! signer.sign_at(&mut request, body, at).unwrap();
//! let authorization = request.headers()["authorization"].to_str().unwrap();
//! assert!(authorization.starts_with(
//!     "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, \
//!      SignedHeaders=content-type;host;x-amz-date, Signature="
//! ));
//! assert_eq!(request.headers()["x-amz-date"], "20231114T221320Z");
//! assert!(!format!("{signer:?}").contains("EXAMPLEKEY"));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::error::{ConfigError, config_error};
use crate::key::ApiKey;

/// The service name Bedrock's runtime API is signed for.
pub const BEDROCK_SERVICE: &str = "bedrock";

/// AWS credentials: an access key id, a secret access key, and a session token for
/// temporary credentials. The secret and the token never print.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: ApiKey,
    session_token: Option<ApiKey>,
}

impl AwsCredentials {
    /// Long-term credentials: an access key id and its secret.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<ApiKey>) -> Self {
        AwsCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// With the session token of temporary credentials (STS, SSO, an instance role).
    pub fn session_token(mut self, token: impl Into<ApiKey>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when set,
    /// `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let access_key_id = ApiKey::from_env_vars(&["AWS_ACCESS_KEY_ID"]).ok_or_else(|| {
            config_error("credentials", "not given and AWS_ACCESS_KEY_ID is not set")
        })?;
        let secret = ApiKey::from_env_vars(&["AWS_SECRET_ACCESS_KEY"]).ok_or_else(|| {
            config_error(
                "credentials",
                "not given and AWS_SECRET_ACCESS_KEY is not set",
            )
        })?;
        let credentials = AwsCredentials::new(access_key_id.expose(), secret);
        Ok(match ApiKey::from_env_vars(&["AWS_SESSION_TOKEN"]) {
            Some(token) => credentials.session_token(token),
            None => credentials,
        })
    }

    /// The access key id (not a secret: AWS shows it in consoles and in the signature's
    /// `Credential=`).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secrets an upstream's text must be scrubbed of: the secret access key and the
    /// session token (which is sent, so a proxy may echo it).
    pub fn secrets(&self) -> impl Iterator<Item = &ApiKey> {
        std::iter::once(&self.secret_access_key).chain(self.session_token.as_ref())
    }

    /// Refuses credentials that cannot go in a header (signing would fail on every call).
    fn check(&self) -> Result<(), ConfigError> {
        let printable = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        if !printable(&self.access_key_id) {
            return Err(config_error(
                "credentials",
                "the access key id must be non-empty printable ASCII",
            ));
        }
        if !printable(self.secret_access_key.expose()) {
            return Err(config_error(
                "credentials",
                "the secret access key must be non-empty printable ASCII",
            ));
        }
        if let Some(token) = &self.session_token
            && !printable(token.expose())
        {
            return Err(config_error(
                "credentials",
                "the session token must be non-empty printable ASCII",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// Signs requests with SigV4 for one region and service. See the [module docs](self).
#[derive(Clone)]
pub struct SigV4Signer {
    credentials: AwsCredentials,
    /// The credentials as `aws-sigv4` takes them, built once.
    identity: Identity,
    region: String,
    service: Cow<'static, str>,
    content_sha256: bool,
}

impl fmt::Debug for SigV4Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigV4Signer")
            .field("credentials", &self.credentials)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("content_sha256", &self.content_sha256)
            .finish_non_exhaustive()
    }
}

impl SigV4Signer {
    /// A signer for Bedrock in `region`.
    pub fn new(
        credentials: AwsCredentials,
        region: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        credentials.check()?;
        let region = region.into();
        let valid_region = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_region {
            return Err(config_error(
                "region",
                format!("{region:?} is not an AWS region (such as us-east-1)"),
            ));
        }
        let identity = Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.expose().to_owned(),
            credentials
                .session_token
                .as_ref()
                .map(|token| token.expose().to_owned()),
            None,
            "tower-llm-providers",
        )
        .into();
        Ok(SigV4Signer {
            credentials,
            identity,
            region,
            service: Cow::Borrowed(BEDROCK_SERVICE),
            content_sha256: false,
        })
    }

    /// A Bedrock signer from the environment: the credentials of
    /// [`AwsCredentials::from_env`], the region from `AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let credentials = AwsCredentials::from_env()?;
        let region = region_from_env().ok_or_else(|| {
            config_error(
                "region",
                "not given and neither AWS_REGION nor AWS_DEFAULT_REGION is set",
            )
        })?;
        SigV4Signer::new(credentials, region)
    }

    /// Signs for another service than `bedrock` (AWS's test vectors use `service`).
    pub fn service(mut self, service: impl Into<Cow<'static, str>>) -> Self {
        self.service = service.into();
        self
    }

    /// Sends the body's SHA-256 as `x-amz-content-sha256` (and signs it). Off by default:
    /// Bedrock does not ask for it.
    pub fn content_sha256_header(mut self, send: bool) -> Self {
        self.content_sha256 = send;
        self
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The credentials.
    pub fn credentials(&self) -> &AwsCredentials {
        &self.credentials
    }

    /// Signs `request`, whose body is `body`, as of now.
    pub fn sign<B>(&self, request: &mut http::Request<B>, body: &[u8]) -> Result<(), SigningError> {
        self.sign_at(request, body, SystemTime::now())
    }

    /// Signs `request`, whose body is `body`, as of `time` (for tests and known-answer
    /// vectors).
    pub fn sign_at<B>(
        &self,
        request: &mut http::Request<B>,
        body: &[u8],
        time: SystemTime,
    ) -> Result<(), SigningError> {
        let mut settings = SigningSettings::default();
        if self.content_sha256 {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| SigningError(e.to_string()))?
            .into();
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                value
                    .to_str()
                    .map(|value| (name.as_str(), value))
                    .map_err(|_| SigningError(format!("header {name} is not visible ASCII")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let uri = request.uri().to_string();
        let signable = SignableRequest::new(
            request.method().as_str(),
            uri,
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| SigningError(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| SigningError(e.to_string()))?
            .into_parts();
        let (new_headers, _query) = instructions.into_parts();
        for header in new_headers {
            let mut value = http::HeaderValue::from_str(header.value()).map_err(|_| {
                SigningError(format!("signed header {} is not valid", header.name()))
            })?;
            // The signature is as good as the key for a replay window: never logged.
            let secret = header.sensitive() || header.name() == "authorization";
            value.set_sensitive(secret);
            request.headers_mut().insert(header.name(), value);
        }
        Ok(())
    }
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION` (the AWS SDKs' order).
pub fn region_from_env() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    })
}

/// A request could not be signed (a header that is not ASCII, a URI `aws-sigv4` refuses).
/// Its text never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningError(String);

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigV4 signing failed: {}", self.0)
    }
}

impl std::error::Error for SigningError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_signer(credentials: AwsCredentials) -> SigV4Signer {
        SigV4Signer::new(credentials, "us-east-1")
            .expect("valid")
            .service("service")
    }

    fn header<'a, B>(request: &'a http::Request<B>, name: &str) -> &'a str {
        request.headers()[name].to_str().expect("ascii")
    }

    // AWS's SigV4 test suite (aws-signing-test-suite/v4, as shipped in aws-sigv4's
    // sources): the request, the credentials, and the Authorization it must get.
    #[test]
    fn post_vanilla_known_answer() {
        let signer = suite_signer(AwsCredentials::new("AKIDEXAMPLE", SECRET));
        let mut request = http::Request::post("https://example.amazonaws.com/")
            .body(())
            .expect("valid");
        signer
            .sign_at(&mut request, b"", suite_time())
            .expect("signs");
        assert_eq!(header(&request, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
        assert!(request.headers()["authorization"].is_sensitive());
        assert!(request.headers().get("x-amz-content-sha256").is_none());
        assert!(request.headers().get("x-amz-security-token").is_none());
    }

    #[test]
    fn session_token_known_answer() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let signer = suite_signer(AwsCredentials::new("AKIDEXAMPLE", SECRET).session_token(token));
        let mut request = http::Request::get("https://example.amazonaws.com/")
            .body(())
            .expect("valid");
        signer
            .sign_at(&mut request, b"", suite_time())
            .expect("signs");
        assert_eq!(header(&request, "x-amz-security-token"), token);
        assert!(request.headers()["x-amz-security-token"].is_sensitive());
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn signed_body_known_answer() {
        let signer =
            suite_signer(AwsCredentials::new("AKIDEXAMPLE", SECRET)).content_sha256_header(true);
        let body = b"Param1=value1";
        let mut request = http::Request::post("https://example.amazonaws.com/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "13")
            .body(())
            .expect("valid");
        signer
            .sign_at(&mut request, body, suite_time())
            .expect("signs");
        assert_eq!(
            header(&request, "x-amz-content-sha256"),
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
        );
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, \
             Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
    }

    #[test]
    fn bedrock_requests_are_signed_for_bedrock_and_the_body_counts() {
        let signer = SigV4Signer::new(AwsCredentials::new("AKIDEXAMPLE", SECRET), "eu-west-3")
            .expect("succeeds");
        let sign = |body: &[u8]| {
            let mut request = http::Request::post(
                "https://bedrock-runtime.eu-west-3.amazonaws.com/model/m%3A0/converse",
            )
            .header("content-type", "application/json")
            .body(())
            .expect("valid");
            signer
                .sign_at(&mut request, body, suite_time())
                .expect("succeeds");
            header(&request, "authorization").to_owned()
        };
        let a = sign(b"{}");
        assert!(a.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature="
        ));
        assert_ne!(a, sign(b"{ }"), "the body is signed");
    }

    #[test]
    fn secrets_never_print() {
        let credentials = AwsCredentials::new("AKIDEXAMPLE", SECRET).session_token("tok-SECRET-9");
        let signer = SigV4Signer::new(credentials.clone(), "us-east-1").expect("succeeds");
        for text in [
            format!("{credentials:?}"),
            format!("{signer:?}"),
            format!("{signer:#?}"),
        ] {
            assert!(text.contains("AKIDEXAMPLE"), "{text}");
            assert!(
                !text.contains("EXAMPLEKEY") && !text.contains("SECRET-9"),
                "{text}"
            );
        }
        let secrets: Vec<&str> = credentials.secrets().map(ApiKey::expose).collect();
        assert_eq!(secrets, [SECRET, "tok-SECRET-9"]);
    }

    #[test]
    fn bad_credentials_and_regions_are_refused_when_built() {
        let bad = [
            (AwsCredentials::new("", SECRET), "us-east-1", "credentials"),
            (
                AwsCredentials::new("AK", "sec ret"),
                "us-east-1",
                "credentials",
            ),
            (
                AwsCredentials::new("AK", SECRET).session_token("a\nb"),
                "us-east-1",
                "credentials",
            ),
            (AwsCredentials::new("AK", SECRET), "", "region"),
            (AwsCredentials::new("AK", SECRET), "us east", "region"),
        ];
        for (credentials, region, knob) in bad {
            let error = SigV4Signer::new(credentials, region).expect_err("fails");
            assert_eq!(error.knob(), knob);
            assert!(!error.to_string().contains("EXAMPLEKEY"));
        }
    }

    /// The variables `from_env` reads, cleared in the child processes below.
    const AWS_VARS: [&str; 5] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ];

    /// The environment cannot be changed in-process without `unsafe`: each case runs this
    /// test again in a child process with its own variables, where the child's half below
    /// checks what `from_env` read against what the parent expects.
    #[test]
    fn credentials_and_region_come_from_the_environment() {
        if let Ok(expected) = std::env::var("BEDROCK_ENV_EXPECT") {
            match SigV4Signer::from_env() {
                Ok(signer) => {
                    let credentials = signer.credentials();
                    let mut secrets = credentials.secrets().map(ApiKey::expose);
                    let seen = format!(
                        "{} {} {} {}",
                        credentials.access_key_id(),
                        secrets.next().unwrap_or("-"),
                        secrets.next().unwrap_or("-"),
                        signer.region()
                    );
                    assert_eq!(seen, expected);
                }
                Err(error) => assert_eq!(format!("error {}", error.knob()), expected),
            }
            return;
        }
        let name = "bedrock::sign::tests::credentials_and_region_come_from_the_environment";
        for (vars, expected) in [
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                    ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                    ("AWS_SESSION_TOKEN", "env-token"),
                    ("AWS_REGION", "eu-central-1"),
                    ("AWS_DEFAULT_REGION", "us-west-2"),
                ][..],
                "AKIDENV env-secret env-token eu-central-1",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                    ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                    ("AWS_DEFAULT_REGION", "us-west-2"),
                ],
                "AKIDENV env-secret - us-west-2",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                    ("AWS_REGION", "us-west-2"),
                ],
                "error credentials",
            ),
            (
                &[
                    ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                    ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                    ("AWS_REGION", " "),
                ],
                "error region",
            ),
        ] {
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"));
            child.args([name, "--exact", "--test-threads=1"]);
            for var in AWS_VARS {
                child.env_remove(var);
            }
            child.envs(vars.iter().copied());
            child.env("BEDROCK_ENV_EXPECT", expected);
            let output = child.output().expect("the test binary runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("1 passed"),
                "{expected}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    #[test]
    fn a_header_that_is_not_ascii_is_an_error_not_a_panic() {
        let signer =
            SigV4Signer::new(AwsCredentials::new("AK", SECRET), "us-east-1").expect("succeeds");
        let mut request = http::Request::post("https://example.amazonaws.com/")
            .header(
                "x-note",
                http::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque"),
            )
            .body(())
            .expect("valid");
        let error = signer
            .sign_at(&mut request, b"", suite_time())
            .expect_err("fails");
        assert!(error.to_string().contains("x-note"));
        assert!(request.headers().get("authorization").is_none());
    }
}
