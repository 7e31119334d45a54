//! Which service answered, carried on the response when asked for.
//!
//! Every strategy that returns one service's response knows an [`Answered`]: the index of the
//! service in the list the strategy was built from, and how many calls the strategy started
//! for this request. What happens to it is the strategy's `W` type parameter, a
//! [`RecordWinner`], set with the layer's `record_winner` method:
//!
//! - [`NoRecord`] (the default): nothing, so a strategy takes any response type, a plain
//!   `String` or a typed provider answer, with no trait to implement;
//! - [`MarkResponse`]: on the response itself, through the [`RecordAnswer`] trait: an
//!   `http::Response<B>` keeps it as a response extension
//!   (`response.extensions().get::<Answered>()`); any other response is wrapped in
//!   [`Answer<T>`] by the provider service (`service.map_response(Answer::new)`), which keeps
//!   the mark beside the response;
//! - any `Fn(&mut Res, Answered)`, to put it where your own type keeps it.
//!
//! When strategies nest (a route whose second service is a vote), the outermost strategy
//! writes last, so the mark names the service in its own list.

use std::ops::{Deref, DerefMut};

use tower_llm_core::{ClassifyResponse, EndSignal, Outcome};

/// Which service of a strategy answered, and after how many calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Answered {
    /// The index of the answering service in the strategy's list.
    pub service: usize,
    /// How many calls the strategy started for this request, the answering one included
    /// (a race starts one per service, a fallback one per service tried, a hedge one per
    /// attempt it sent).
    pub attempts: usize,
}

impl Answered {
    /// Service `service` answered after `attempts` calls were started.
    pub const fn new(service: usize, attempts: usize) -> Self {
        Answered { service, attempts }
    }
}

/// What a strategy does with the [`Answered`] mark of the response it returns: the `W` type
/// parameter of every strategy that returns one service's response, set with the layer's
/// `record_winner` method.
///
/// Implemented by [`NoRecord`] (the default: nothing), [`MarkResponse`] (on a response that
/// implements [`RecordAnswer`]) and any `Fn(&mut Res, Answered)`.
pub trait RecordWinner<Res> {
    /// Records that `response` came from the service `answered` names.
    fn record_winner(&self, response: &mut Res, answered: Answered);
}

/// Records nothing: the default, which puts no bound on the response type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoRecord;

impl<Res> RecordWinner<Res> for NoRecord {
    #[inline]
    fn record_winner(&self, _response: &mut Res, _answered: Answered) {}
}

/// Marks the response itself through [`RecordAnswer`]: an extension on `http::Response`, the
/// field of an [`Answer<T>`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkResponse;

impl<Res: RecordAnswer> RecordWinner<Res> for MarkResponse {
    #[inline]
    fn record_winner(&self, response: &mut Res, answered: Answered) {
        response.record_answer(answered);
    }
}

impl<Res, F> RecordWinner<Res> for F
where
    F: Fn(&mut Res, Answered),
{
    fn record_winner(&self, response: &mut Res, answered: Answered) {
        self(response, answered)
    }
}

/// A response that can carry an [`Answered`] mark, for [`MarkResponse`].
///
/// Implemented for `http::Response<B>` (as an extension) and for [`Answer<T>`]. Implement it
/// for a response type of your own to keep the mark on it.
pub trait RecordAnswer {
    /// Records which service answered, replacing an earlier mark.
    fn record_answer(&mut self, answered: Answered);

    /// The recorded mark, if a strategy set one.
    fn answered(&self) -> Option<Answered>;
}

impl<B> RecordAnswer for http::Response<B> {
    fn record_answer(&mut self, answered: Answered) {
        self.extensions_mut().insert(answered);
    }

    fn answered(&self) -> Option<Answered> {
        self.extensions().get::<Answered>().copied()
    }
}

/// A response with room for an [`Answered`] mark, for response types that have none.
///
/// Wrap a provider's responses with `ServiceExt::map_response(Answer::new)` before handing
/// the services to a strategy. It dereferences to the response and classifies as it does.
///
/// ```
/// use tower_llm_race::{Answer, Answered, RecordAnswer};
///
/// let mut answer = Answer::new("42".to_string());
/// assert_eq!(answer.answered(), None);
/// answer.record_answer(Answered::new(1, 2));
/// assert_eq!(answer.answered().map(|a| a.service), Some(1));
/// assert_eq!(answer.len(), 2); // derefs to the String
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    response: T,
    answered: Option<Answered>,
}

impl<T> Answer<T> {
    /// Wraps a response that no strategy has marked yet.
    pub const fn new(response: T) -> Self {
        Answer {
            response,
            answered: None,
        }
    }

    /// The response.
    pub const fn get_ref(&self) -> &T {
        &self.response
    }

    /// The response, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.response
    }

    /// The response, unwrapped.
    pub fn into_inner(self) -> T {
        self.response
    }
}

impl<T> RecordAnswer for Answer<T> {
    fn record_answer(&mut self, answered: Answered) {
        self.answered = Some(answered);
    }

    fn answered(&self) -> Option<Answered> {
        self.answered
    }
}

impl<T> Deref for Answer<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.response
    }
}

impl<T> DerefMut for Answer<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.response
    }
}

impl<T: ClassifyResponse> ClassifyResponse for Answer<T> {
    fn classify_response(&self) -> Outcome {
        self.response.classify_response()
    }

    fn end_signal(&mut self) -> Option<&mut EndSignal> {
        self.response.end_signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_keep_the_mark_as_an_extension() {
        let mut response = http::Response::new(());
        assert_eq!(response.answered(), None);
        let mark = Answered::new(2, 3);
        response.record_answer(mark);
        assert_eq!(response.extensions().get::<Answered>(), Some(&mark));
        assert_eq!(response.answered(), Some(mark));
    }
}
