//! The accept loop: each connection served by hyper's HTTP/1 with half-closed
//! connections answered, and a graceful shutdown.
//!
//! `axum::serve` does not let hyper's connection options be set, and by default hyper
//! closes a connection whose client has shut down its write side, without answering
//! the request it sent (`curl` with `--http1.0`-style clients, `nc -N`, load balancers'
//! health checks do that). So the connections are served here, as `axum::serve` does
//! otherwise: one task per connection, every connection told to finish its request in
//! progress and close once the stop signal comes.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves `app` on `listener` until `stop` resolves (or its sender is dropped), then
/// stops accepting and waits for every connection to finish the request it is
/// answering. A connection that takes longer than `header_timeout` to send a request's
/// headers (an idle keep-alive connection included) is closed. Dropping the returned
/// future (aborting its task) drops every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    header_timeout: Option<Duration>,
) {
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // Finished connections are reaped as they end, so that the set holds only
            // the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let mut closing = closing_seen.clone();
                connections.spawn(async move {
                    let mut http = hyper::server::conn::http1::Builder::new();
                    // A client that shuts down its write side once its request is sent
                    // still gets the answer.
                    http.half_close(true);
                    // hyper's timer drives the header timeout (without one, hyper
                    // would not apply it).
                    http.timer(TokioTimer::new());
                    http.header_read_timeout(header_timeout);
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => return,
                        _ = closing.wait_for(|closing| *closing) => {}
                    }
                    // Finish the request in progress, if any, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// After a failed accept: a connection that failed before it was accepted is skipped;
/// anything else (too many open files) is waited out for a second, as hyper's own
/// server did, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
