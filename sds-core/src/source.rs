//! The `SecretSource` trait: anything that can produce complete [`Update`]s.

use futures_core::Stream;

use crate::Update;

/// A producer of credentials: a directory, the Kubernetes API, a test fixture.
///
/// A source yields complete updates, never deltas: each item says everything the source holds
/// now, valid secrets and rejected names alike. The first item is the initial state. An `Err`
/// item is ambient (the directory is unreadable, the API server is unreachable): the publisher
/// reports it and keeps serving the last good snapshot.
pub trait SecretSource: Send + 'static {
    /// Ambient errors of this source.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Turns the source into its stream of updates. Dropping the stream stops the source.
    fn into_stream(self) -> impl Stream<Item = Result<Update, Self::Error>> + Send + 'static;
}

/// A [`SecretSource`] made from any stream of updates, e.g. `futures::stream::iter(..)` in tests.
pub fn from_stream<St, E>(stream: St) -> FromStream<St>
where
    St: Stream<Item = Result<Update, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    FromStream(stream)
}

/// The source returned by [`from_stream`].
#[derive(Debug)]
pub struct FromStream<St>(St);

impl<St, E> SecretSource for FromStream<St>
where
    St: Stream<Item = Result<Update, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    fn into_stream(self) -> impl Stream<Item = Result<Update, E>> + Send + 'static {
        self.0
    }
}
