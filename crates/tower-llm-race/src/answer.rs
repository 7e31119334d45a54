//! Which service answered, carried on the response.
//!
//! Every strategy that returns one service's response marks it with an [`Answered`]: the
//! index of the service in the list the strategy was built from, and how many calls the
//! strategy started for this request. The mark goes where the response type can keep it,
//! through the [`RecordAnswer`] trait:
//!
//! - an `http::Response<B>` keeps it as a response extension
//!   (`response.extensions().get::<Answered>()`), so an HTTP stack keeps its types;
//! - any other response is wrapped in [`Answer<T>`] by the provider service
//!   (`service.map_response(Answer::new)`), which keeps the mark beside the response.
//!
//! When strategies nest (a route whose second service is a vote), the outermost strategy
//! writes last, so the mark names the service in its own list.

use std::ops::{Deref, DerefMut};

use tower_llm_core::{ClassifyResponse, Outcome};

/// Which service of a strategy answered, and after how many calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Answered {
    /// The index of the answering service in the strategy's list.
    pub service: usize,
    /// How many calls the strategy started for this request, the answering one included
    /// (a race starts one per service, a fallback one per service tried, a hedge one per
    /// attempt it sent).
    pub attempts: u32,
}

/// A response that can carry an [`Answered`] mark.
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
/// answer.record_answer(Answered { service: 1, attempts: 2 });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_keep_the_mark_as_an_extension() {
        let mut response = http::Response::new(());
        assert_eq!(response.answered(), None);
        let mark = Answered {
            service: 2,
            attempts: 3,
        };
        response.record_answer(mark);
        assert_eq!(response.extensions().get::<Answered>(), Some(&mark));
        assert_eq!(response.answered(), Some(mark));
    }
}
