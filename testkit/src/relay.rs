//! What the testkit's servers share: a listener on `127.0.0.1` that serves
//! each connection on a thread of its own ([`Acceptor`]), and a relay between
//! two sockets with idle and overall limits ([`connect`], [`both_ways`],
//! [`copy`]).
//!
//! An [`Acceptor`] serves at most a given number of connections at once (more
//! are closed at once: the client sees a reset) and tracks every socket its
//! connections open; dropping it shuts them all down and joins every thread it
//! started. The relay bounds everything: a read waits at most a given limit and
//! never past the connection's deadline, a write blocks 10 s at most, and
//! connecting to a backend takes 5 s at most.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a relayed connection lives.
pub(crate) const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// The longest either side of a relay may stay silent before it is cut.
pub(crate) const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Bytes read from a socket at a time.
pub(crate) const CHUNK: usize = 16 * 1024;
/// How long a write to either side may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Locks `mutex`, whether or not a thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A listener on `127.0.0.1` (ephemeral port) and the thread that accepts on
/// it. Stops when dropped: every tracked socket is shut down, and the accept
/// thread and every connection thread are joined.
pub(crate) struct Acceptor {
    addr: SocketAddr,
    tracker: Arc<Tracker>,
    thread: Option<JoinHandle<()>>,
}

/// The open sockets, by connection, and whether the acceptor is stopping.
struct Tracker {
    stopping: AtomicBool,
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Tracker {
    /// Tracks `stream` under connection `id`; `false` (and nothing tracked)
    /// once the acceptor is stopping.
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let mut sockets = lock(&self.sockets);
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        if let Ok(clone) = stream.try_clone() {
            sockets.entry(id).or_default().push(clone);
        }
        true
    }

    fn forget(&self, id: u64) {
        lock(&self.sockets).remove(&id);
    }
}

/// One accepted connection, as its thread sees it.
pub(crate) struct Connection<'a> {
    id: u64,
    tracker: &'a Tracker,
}

impl Connection<'_> {
    /// Tracks another socket this connection opened, so that stopping the
    /// acceptor shuts it down too; `false` (and nothing tracked) once the
    /// acceptor is stopping.
    pub(crate) fn track(&self, stream: &TcpStream) -> bool {
        self.tracker.register(self.id, stream)
    }

    /// Whether the acceptor is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.tracker.stopping.load(Ordering::SeqCst)
    }
}

impl Acceptor {
    /// Binds `127.0.0.1:0` and accepts on a thread named `name`; each
    /// connection is served by `serve` (given `shared`) on a thread named
    /// `{name}-conn`, then shut down. At most `max_connections` are served at
    /// once.
    pub(crate) fn start<S, F>(
        name: &str,
        max_connections: usize,
        shared: Arc<S>,
        serve: F,
    ) -> io::Result<Acceptor>
    where
        S: Send + Sync + 'static,
        F: Fn(&TcpStream, &Connection<'_>, &S) + Send + Sync + 'static,
    {
        let serve = move |stream: &TcpStream, connection: &Connection<'_>| {
            serve(stream, connection, &shared);
        };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let tracker = Arc::new(Tracker {
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
        });
        let accept_tracker = Arc::clone(&tracker);
        let worker_name = format!("{name}-conn");
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                accept_loop(
                    &listener,
                    &accept_tracker,
                    max_connections,
                    &worker_name,
                    &Arc::new(serve),
                );
            })?;
        Ok(Acceptor {
            addr,
            tracker,
            thread: Some(thread),
        })
    }

    /// The address it listens on (`127.0.0.1:PORT`).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.tracker.stopping.store(true, Ordering::SeqCst);
        // Wake the accept thread with one last connection, and unblock the connections.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, streams) in lock(&self.tracker.sockets).drain() {
            for stream in streams {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until the acceptor stops, then joins the connection threads.
fn accept_loop<F>(
    listener: &TcpListener,
    tracker: &Arc<Tracker>,
    max_connections: usize,
    worker_name: &str,
    serve: &Arc<F>,
) where
    F: Fn(&TcpStream, &Connection<'_>) + Send + Sync + 'static,
{
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    for stream in listener.incoming() {
        if tracker.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        workers.retain(|worker| !worker.is_finished());
        if workers.len() >= max_connections {
            continue; // dropped: the client sees a reset
        }
        let id = next_id;
        next_id += 1;
        if !tracker.register(id, &stream) {
            break;
        }
        let (worker_tracker, worker_serve) = (Arc::clone(tracker), Arc::clone(serve));
        let spawned = std::thread::Builder::new()
            .name(worker_name.to_owned())
            .spawn(move || {
                let connection = Connection {
                    id,
                    tracker: &worker_tracker,
                };
                worker_serve(&stream, &connection);
                let _ = stream.shutdown(Shutdown::Both);
                worker_tracker.forget(id);
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(_) => tracker.forget(id),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Sets up a socket of a relay: no Nagle delay, writes bounded to 10 s.
pub(crate) fn prepare(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
}

/// Opens the backend side of a relay for `connection`: connects to `addr`
/// (within 5 s), tracks the socket, and [`prepare`]s it. An error if the
/// connection fails, and once the acceptor is stopping (its client socket is
/// shut down by then).
pub(crate) fn connect(addr: &SocketAddr, connection: &Connection<'_>) -> io::Result<TcpStream> {
    let backend = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
    if !connection.track(&backend) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the acceptor is stopping",
        ));
    }
    prepare(&backend);
    Ok(backend)
}

/// Sets `stream`'s read timeout to `limit`, or less if `deadline` is nearer;
/// an error once `deadline` has passed.
pub(crate) fn read_timeout_until(
    stream: &TcpStream,
    deadline: Instant,
    limit: Duration,
) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection deadline passed",
        ));
    }
    stream.set_read_timeout(Some(left.min(limit)))
}

/// Reads what `from` has (`Ok(0)` at its end), waiting at most `limit` and
/// never past `deadline`.
pub(crate) fn read_some(
    from: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    limit: Duration,
) -> io::Result<usize> {
    let mut reader = from;
    loop {
        read_timeout_until(from, deadline, limit)?;
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Copies `from` to `to` until `from` ends; either side may stay silent for
/// [`IDLE_LIMIT`] at most.
pub(crate) fn copy(from: &TcpStream, to: &TcpStream, deadline: Instant) -> io::Result<()> {
    let mut writer = to;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match read_some(from, &mut buf, deadline, IDLE_LIMIT)? {
            0 => return Ok(()),
            n => writer.write_all(&buf[..n])?,
        }
    }
}

/// Relays both ways between `client` and `backend`: `up` (client to backend)
/// runs on the calling thread, `down` (backend to client) on a scoped thread
/// named `{name}-down`. A clean end in one direction half-closes the side it
/// wrote to (so an answer still in flight arrives); an error shuts both
/// sockets down, which ends the other direction too.
pub(crate) fn both_ways(
    name: &str,
    client: &TcpStream,
    backend: &TcpStream,
    up: impl FnOnce() -> io::Result<()>,
    down: impl FnOnce() -> io::Result<()> + Send,
) {
    let abort = || {
        let _ = client.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
    };
    let end = |result: io::Result<()>, written: &TcpStream| match result {
        Ok(()) => {
            let _ = written.shutdown(Shutdown::Write);
        }
        Err(_) => abort(),
    };
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-down"))
            .spawn_scoped(scope, || end(down(), client));
        if spawned.is_err() {
            abort();
            return;
        }
        end(up(), backend);
        // The scope joins the other direction.
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn serves_at_most_the_limit_and_drop_joins_everything() {
        let (events, seen) = std::sync::mpsc::channel();
        let events = Arc::new(events);
        let acceptor = Acceptor::start("relay-test", 1, events, |client, connection, events| {
            let _ = events.send("served");
            // Hold the connection until the client or the drop ends it.
            let mut byte = [0u8; 1];
            let _ = read_some(client, &mut byte, Instant::now() + WAIT, WAIT);
            let _ = events.send(if connection.stopping() {
                "ended by the drop"
            } else {
                "ended otherwise"
            });
        })
        .unwrap();
        let _first = TcpStream::connect(acceptor.addr()).unwrap();
        assert_eq!(seen.recv_timeout(WAIT), Ok("served"));
        // The second is over the limit: closed without being served.
        let mut second = TcpStream::connect(acceptor.addr()).unwrap();
        second.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = [0u8; 1];
        assert!(!matches!(second.read(&mut rest), Ok(n) if n > 0));
        let started = Instant::now();
        drop(acceptor);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The drop joined the connection thread: its last word is already sent.
        assert_eq!(seen.try_recv(), Ok("ended by the drop"));
        assert!(seen.try_recv().is_err());
    }
}
