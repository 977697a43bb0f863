//! CPU-heavy parsing off the event loop.
//!
//! `serve` runs every task on one thread (see `cli`): webhook acknowledgements, the ingest
//! flushers and the worker are waiting on sockets nearly all the time, and one thread avoids
//! the wake-ups and hand-offs between threads that otherwise cost more CPU than the requests.
//! The price is that nothing may hold the thread for long, so a body large enough to take
//! milliseconds to parse (a big webhook delivery, a page of a calendar view) is parsed on
//! tokio's blocking pool while the loop goes on answering; small ones, nearly all of them,
//! are parsed in place, where the hand-off would cost more than the parse.

use bytes::Bytes;

/// Bodies up to this many bytes are parsed in place: well under a millisecond of work.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;

/// `parse(&bytes)`, on the blocking pool when `bytes` is over [`INLINE_MAX_BYTES`].
///
/// A panic in `parse` is resumed in the caller, as if it had run in place.
pub async fn parse<T, F>(bytes: Bytes, parse: F) -> T
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> T + Send + 'static,
{
    if bytes.len() <= INLINE_MAX_BYTES {
        return parse(&bytes);
    }
    match tokio::task::spawn_blocking(move || parse(&bytes)).await {
        Ok(parsed) => parsed,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_of(_: &[u8]) -> std::thread::ThreadId {
        std::thread::current().id()
    }

    #[tokio::test]
    async fn a_small_body_is_parsed_on_the_calling_thread() {
        let here = std::thread::current().id();
        let body = Bytes::from(vec![b'x'; INLINE_MAX_BYTES]);
        assert_eq!(parse(body, thread_of).await, here);
    }

    #[tokio::test]
    async fn a_large_body_is_parsed_on_another_thread_and_gives_the_same_answer() {
        let here = std::thread::current().id();
        let body = Bytes::from(vec![b'x'; INLINE_MAX_BYTES + 1]);
        assert_ne!(parse(body.clone(), thread_of).await, here);
        assert_eq!(parse(body, <[u8]>::len).await, INLINE_MAX_BYTES + 1);
    }

    #[tokio::test]
    #[should_panic(expected = "parser bug")]
    async fn a_panic_in_an_offloaded_parse_reaches_the_caller() {
        let body = Bytes::from(vec![b'x'; INLINE_MAX_BYTES + 1]);
        parse(body, |_| -> () { panic!("parser bug") }).await;
    }
}
