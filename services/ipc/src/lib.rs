//! `hearth-ipc`: the wire protocol between `hearthd` and the inference worker.
//!
//! One request per connection on a Unix stream socket, newline-delimited JSON frames.
//! The client writes one [`Request`]; the worker answers with [`Event`]s and closes.
//! Closing the connection early is how the client cancels a generation.
//!
//! This crate owns the message types and the framing, nothing else: no model math, no HTTP.
//! Frames are bounded ([`MAX_FRAME_BYTES`]) so a confused peer cannot make the other side
//! allocate without limit.

use hearth_engine::{ChatMessage, Completion, ModelInfo, SamplingParams};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts (a request carries the whole conversation).
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// What `hearthd` asks of the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Which models the worker has and in what state. Answered with [`Event::Status`].
    Status,
    /// Render the chat template, tokenize and generate. Answered with `Started`, `Text`*,
    /// then `Done` or `Error`.
    Chat(ChatRequest),
    /// Make the loaded set exactly `models`: new ids (or ids whose path changed) start
    /// loading, ids not listed are unloaded once their queued jobs end. Answered with
    /// [`Event::Status`]. `hearthd` sends it whenever the model library changes.
    SetModels { models: Vec<ModelSpec> },
}

/// A model the worker should have loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate; `None` fills the rest of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
}

/// What the worker sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Status {
        models: Vec<ModelStatus>,
    },
    /// The prompt was accepted; generation begins.
    Started {
        prompt_tokens: usize,
    },
    Text {
        text: String,
    },
    Done {
        completion: Completion,
    },
    Error(WorkerError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub id: String,
    pub state: ModelState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    Loading,
    Ready {
        info: ModelInfo,
    },
    /// The file could not be loaded; `reason` says why (not a GGUF, truncated, ...).
    Failed {
        reason: String,
    },
}

/// A refusal or fault, with a kind `hearthd` maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WorkerError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No model by that name.
    UnknownModel,
    /// The model exists but is loading or failed to load.
    ModelUnavailable,
    /// The request is wrong (empty prompt, bad parameters, template refused it).
    InvalidRequest,
    /// Prompt plus answer would not fit the context.
    ContextLength,
    /// Too many requests are waiting for this model.
    Busy,
    /// The worker failed; details are in its log.
    Internal,
}

impl WorkerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame longer than {MAX_FRAME_BYTES} bytes")]
    TooLong,
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame; `None` when the peer closed the connection cleanly.
pub async fn read_frame<R: AsyncBufRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(serde_json::from_slice(&line)?));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn frames_round_trip() {
        let (a, b) = tokio::io::duplex(64);
        let (_, mut w) = tokio::io::split(a);
        let (r, _) = tokio::io::split(b);
        let mut r = BufReader::new(r);
        let sent = Event::Text {
            text: "line\nbreak \u{1F600}".into(),
        };
        let writer = tokio::spawn(async move {
            write_frame(&mut w, &sent).await.unwrap();
            write_frame(&mut w, &Event::Started { prompt_tokens: 3 })
                .await
                .unwrap();
        });
        let got: Event = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(
            got,
            Event::Text {
                text: "line\nbreak \u{1F600}".into()
            }
        );
        let got: Event = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(got, Event::Started { prompt_tokens: 3 });
        writer.await.unwrap();
        assert!(read_frame::<_, Event>(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn set_models_round_trips() {
        let request = Request::SetModels {
            models: vec![ModelSpec {
                id: "m".into(),
                path: "/data/models/blobs/sha256-00".into(),
            }],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &request).await.unwrap();
        assert!(buf.starts_with(br#"{"type":"set_models","models":[{"id":"m""#));
        let got: Request = read_frame(&mut BufReader::new(&buf[..]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, request);
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_errors() {
        let big = vec![b'x'; MAX_FRAME_BYTES + 10];
        let mut r = BufReader::new(&big[..]);
        assert!(matches!(
            read_frame::<_, Event>(&mut r).await,
            Err(FrameError::TooLong)
        ));
        let mut r = BufReader::new(&b"{not json}\n"[..]);
        assert!(matches!(
            read_frame::<_, Event>(&mut r).await,
            Err(FrameError::Malformed(_))
        ));
        let mut r = BufReader::new(&b"{\"type\":\"status\""[..]);
        assert!(matches!(
            read_frame::<_, Request>(&mut r).await,
            Err(FrameError::Io(_))
        ));
    }
}
