//! The client side of the activator's Unix socket: one JSON request line
//! per connection, answered by JSON event lines.

use std::path::Path;
use std::time::Duration;

use countersign_core::StorePath;
use countersign_core::protocol::{Event, MAX_REQUEST_BYTES, Outcome, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a status request may take before the activator counts as
/// unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a prepare request may take. The activator evaluates the
/// host's toplevel, which for a large configuration can take minutes.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long an activation may go without any event before the server
/// stops waiting and asks the activator's status instead. The activator
/// reports each step, so a long silence means it is stuck or gone.
pub const ACTIVATION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Largest event line read from the activator, in bytes.
const MAX_EVENT_BYTES: u64 = MAX_REQUEST_BYTES as u64;

/// What the activator reports about itself.
#[derive(Debug, Clone)]
pub struct ActivatorStatus {
    pub current_system: Option<StorePath>,
    pub last_proposal: u64,
    /// The proposal whose activation has begun and not finished.
    pub activating: Option<u64>,
    /// The proposal whose activation waits for a `confirm` request.
    pub awaiting_confirmation: Option<u64>,
}

/// The activator's reply to a `confirm` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The activation is kept.
    Confirmed,
    /// No activation of the proposal waits for a confirmation.
    Refused { message: String },
}

/// How an activation request ended from the server's view.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub proposal: Option<u64>,
    pub message: String,
}

/// The result of a prepare request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The source passed the activator's check, and the attribute
    /// evaluates to `target`; `None` when the activator's configuration
    /// turns evaluation off.
    Evaluated { target: Option<StorePath> },
    /// The activator refused the request.
    Refused { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ActivatorError {
    /// Nothing was sent: the activator cannot have acted on a request.
    #[error("cannot connect to the activator at {socket}: {error}")]
    Connect {
        socket: String,
        error: std::io::Error,
    },
    /// The request may have reached the activator.
    #[error("the connection to the activator at {socket} failed: {error}")]
    Io {
        socket: String,
        error: std::io::Error,
    },
    #[error(
        "the activator at {socket} closed the connection without reporting \
         an outcome"
    )]
    Closed { socket: String },
    #[error("the activator at {socket} sent an invalid line: {error}")]
    Invalid { socket: String, error: String },
    #[error("the activator at {socket} did not answer within {seconds} s")]
    Timeout { socket: String, seconds: u64 },
}

impl ActivatorError {
    /// Whether the request certainly did not reach the activator.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, ActivatorError::Connect { .. })
    }
}

struct Connection {
    socket: String,
    reader: BufReader<OwnedReadHalf>,
    _writer: OwnedWriteHalf,
}

impl Connection {
    async fn open(
        socket: &Path,
        request: &Request,
    ) -> Result<Self, ActivatorError> {
        let name = socket.display().to_string();
        let stream = UnixStream::connect(socket).await.map_err(|error| {
            ActivatorError::Connect {
                socket: name.clone(),
                error,
            }
        })?;
        // The write half stays open until the exchange ends, because an
        // activator may take the end of its input as a client that left.
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request)
            .expect("a protocol request always serialises");
        line.push(b'\n');
        let io_error = |error| ActivatorError::Io {
            socket: name.clone(),
            error,
        };
        write.write_all(&line).await.map_err(io_error)?;
        write.flush().await.map_err(io_error)?;
        Ok(Self {
            socket: name,
            reader: BufReader::new(read),
            _writer: write,
        })
    }

    /// Reads the next event, or `None` at the end of the stream.
    async fn next_event(&mut self) -> Result<Option<Event>, ActivatorError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_EVENT_BYTES + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| ActivatorError::Io {
                socket: self.socket.clone(),
                error,
            })?;
        if read == 0 {
            return Ok(None);
        }
        if line.len() as u64 > MAX_EVENT_BYTES {
            return Err(ActivatorError::Invalid {
                socket: self.socket.clone(),
                error: format!(
                    "a line is longer than {MAX_EVENT_BYTES} bytes"
                ),
            });
        }
        serde_json::from_slice(&line).map(Some).map_err(|error| {
            ActivatorError::Invalid {
                socket: self.socket.clone(),
                error: error.to_string(),
            }
        })
    }
}

/// Asks the activator for its status.
pub async fn status(socket: &Path) -> Result<ActivatorStatus, ActivatorError> {
    let exchange = async {
        let mut connection =
            Connection::open(socket, &Request::Status).await?;
        loop {
            match connection.next_event().await? {
                Some(Event::Status {
                    current_system,
                    last_proposal,
                    activating,
                    awaiting_confirmation,
                    ..
                }) => {
                    return Ok(ActivatorStatus {
                        current_system,
                        last_proposal,
                        activating,
                        awaiting_confirmation,
                    });
                }
                Some(Event::Finished { message, .. }) => {
                    return Err(ActivatorError::Invalid {
                        socket: connection.socket,
                        error: format!(
                            "answered the status request with an outcome: \
                             {message}"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(ActivatorError::Closed {
                        socket: connection.socket,
                    });
                }
            }
        }
    };
    tokio::time::timeout(STATUS_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(ActivatorError::Timeout {
                socket: socket.display().to_string(),
                seconds: STATUS_TIMEOUT.as_secs(),
            })
        })
}

/// Confirms to the activator that this server runs and reaches it after
/// the activation of `proposal`.
pub async fn confirm(
    socket: &Path,
    proposal: u64,
) -> Result<Confirmation, ActivatorError> {
    let exchange = async {
        let mut connection =
            Connection::open(socket, &Request::Confirm { proposal }).await?;
        loop {
            match connection.next_event().await? {
                Some(Event::Confirmed { .. }) => {
                    return Ok(Confirmation::Confirmed);
                }
                Some(Event::Finished { message, .. }) => {
                    return Ok(Confirmation::Refused { message });
                }
                Some(_) => {}
                None => {
                    return Err(ActivatorError::Closed {
                        socket: connection.socket,
                    });
                }
            }
        }
    };
    tokio::time::timeout(STATUS_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(ActivatorError::Timeout {
                socket: socket.display().to_string(),
                seconds: STATUS_TIMEOUT.as_secs(),
            })
        })
}

/// Asks the activator to check `source` against `nar_hash` and evaluate
/// `attribute` of it ahead of an activation.
pub async fn prepare(
    socket: &Path,
    source: &StorePath,
    nar_hash: &str,
    attribute: &str,
) -> Result<Prepared, ActivatorError> {
    let request = Request::Prepare {
        source: source.clone(),
        nar_hash: nar_hash.to_owned(),
        attribute: attribute.to_owned(),
    };
    let exchange = async {
        let mut connection = Connection::open(socket, &request).await?;
        loop {
            match connection.next_event().await? {
                Some(Event::Prepared { target }) => {
                    return Ok(Prepared::Evaluated { target });
                }
                Some(Event::Finished { message, .. }) => {
                    return Ok(Prepared::Refused { message });
                }
                Some(_) => {}
                None => {
                    return Err(ActivatorError::Closed {
                        socket: connection.socket,
                    });
                }
            }
        }
    };
    tokio::time::timeout(PREPARE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(ActivatorError::Timeout {
                socket: socket.display().to_string(),
                seconds: PREPARE_TIMEOUT.as_secs(),
            })
        })
}

/// Sends an activation request and passes every event to `on_event` as
/// it arrives, until the activator reports how it ended.
pub async fn activate<F, Fut>(
    socket: &Path,
    request: &Request,
    mut on_event: F,
) -> Result<Finished, ActivatorError>
where
    F: FnMut(Event) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut connection = Connection::open(socket, request).await?;
    loop {
        let next = tokio::time::timeout(
            ACTIVATION_IDLE_TIMEOUT,
            connection.next_event(),
        )
        .await
        .map_err(|_| ActivatorError::Timeout {
            socket: connection.socket.clone(),
            seconds: ACTIVATION_IDLE_TIMEOUT.as_secs(),
        })?;
        let Some(event) = next? else {
            return Err(ActivatorError::Closed {
                socket: connection.socket,
            });
        };
        let finished = match &event {
            Event::Finished {
                outcome,
                proposal,
                message,
            } => Some(Finished {
                outcome: *outcome,
                proposal: *proposal,
                message: message.clone(),
            }),
            _ => None,
        };
        on_event(event).await;
        if let Some(finished) = finished {
            return Ok(finished);
        }
    }
}
