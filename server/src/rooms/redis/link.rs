//! Calling the room scripts from a node: on the Redis engine's runtime and
//! command connection (`engine::redis::RedisLink`, one connection setup per
//! node), bounded by the engine's timeout, and their answers read into a
//! plain tree of texts. Never called on a worker's thread in a way that
//! waits: workers spawn; only the ticker and the publish API's blocking
//! pool wait for an answer.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::redis::RedisLink;
use crate::rooms::redis::scripts::{keys, Scripts, ROOMS_SET};

/// A script's answer: texts and nested lists (Redis integers read as text).
#[derive(Debug, Clone)]
pub enum Reply {
    Text(String),
    List(Vec<Reply>),
}

impl Reply {
    fn from_value(v: redis::Value) -> Reply {
        match v {
            redis::Value::Array(items) | redis::Value::Set(items) => {
                Reply::List(items.into_iter().map(Reply::from_value).collect())
            }
            redis::Value::Nil => Reply::Text(String::new()),
            other => Reply::Text(redis::from_redis_value::<String>(other).unwrap_or_default()),
        }
    }

    /// The text, or "" for a list.
    pub fn text(&self) -> &str {
        match self {
            Reply::Text(t) => t,
            Reply::List(_) => "",
        }
    }

    /// The items, or none for a text.
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::List(items) => items,
            Reply::Text(_) => &[],
        }
    }
}

/// Why a call to Redis failed (recoverable: the next call may succeed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("redis did not answer in time")]
    Timeout,
}

/// Which script to run.
pub type Which = fn(&Scripts) -> &redis::Script;

/// The node's way to its rooms in Redis.
pub struct Link {
    redis: RedisLink,
    scripts: Scripts,
}

impl Link {
    pub fn new(redis: RedisLink) -> Arc<Link> {
        Arc::new(Link {
            redis,
            scripts: Scripts::new(),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.redis.handle
    }

    /// Runs one room script.
    pub async fn call(
        &self,
        which: Which,
        room: &str,
        args: &[String],
    ) -> Result<Reply, LinkError> {
        let mut invocation = which(&self.scripts).prepare_invoke();
        for key in keys(room) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg.as_str());
        }
        let mut conn = self.redis.commands.clone();
        let call = invocation.invoke_async::<redis::Value>(&mut conn);
        match tokio::time::timeout(self.redis.timeout, call).await {
            Ok(Ok(v)) => Ok(Reply::from_value(v)),
            Ok(Err(e)) => Err(LinkError::Redis(e.to_string())),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// The names of every room in Redis.
    pub async fn room_names(&self) -> Result<Vec<String>, LinkError> {
        let mut conn = self.redis.commands.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(ROOMS_SET);
        let call = cmd.query_async::<Vec<String>>(&mut conn);
        match tokio::time::timeout(self.redis.timeout, call).await {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(e)) => Err(LinkError::Redis(e.to_string())),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Runs `work` on the link's runtime and waits for it on this (non
    /// worker) thread, at most the timeout and a margin for a busy runtime.
    pub fn wait<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, LinkError>> + Send + 'static,
    ) -> Result<T, LinkError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.redis.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv_timeout(self.redis.timeout + Duration::from_secs(1))
            .unwrap_or(Err(LinkError::Timeout))
    }
}
