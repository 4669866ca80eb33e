//! Walking many keys or a large set in bounded steps: `SCAN MATCH` / `SSCAN` with a cursor and a
//! `COUNT` hint per step, never `KEYS` or `SMEMBERS`, so no call holds Redis for long whatever the
//! number of jobs. Like the commands, a walk returns every element present throughout it at least
//! once (an element may come twice while Redis rehashes).

use redis::aio::ConnectionLike;
use redis::RedisResult;

/// What a [`Scan`] walks.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// Key names matching a glob pattern (`SCAN`).
    Keys { pattern: &'a str },
    /// The members of one set (`SSCAN`).
    SetMembers { key: &'a str },
}

/// A cursor-based walk, one batch per [`Scan::next_batch`].
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    target: Target<'a>,
    count: usize,
    cursor: u64,
    done: bool,
}

impl<'a> Scan<'a> {
    /// The keys matching `pattern`, about `count` examined per step.
    pub fn keys(pattern: &'a str, count: usize) -> Self {
        Self::new(Target::Keys { pattern }, count)
    }

    /// The members of the set `key`, about `count` per step.
    pub fn set_members(key: &'a str, count: usize) -> Self {
        Self::new(Target::SetMembers { key }, count)
    }

    fn new(target: Target<'a>, count: usize) -> Self {
        Scan {
            target,
            count: count.max(1),
            cursor: 0,
            done: false,
        }
    }

    /// The next non-empty batch (steps that find nothing are passed over), `None` once the cursor
    /// is back at 0.
    pub async fn next_batch(
        &mut self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> RedisResult<Option<Vec<String>>> {
        while !self.done {
            let mut cmd = match self.target {
                Target::Keys { pattern } => {
                    let mut c = redis::cmd("SCAN");
                    c.arg(self.cursor).arg("MATCH").arg(pattern);
                    c
                }
                Target::SetMembers { key } => {
                    let mut c = redis::cmd("SSCAN");
                    c.arg(key).arg(self.cursor);
                    c
                }
            };
            let (next, found): (u64, Vec<String>) =
                cmd.arg("COUNT").arg(self.count).query_async(conn).await?;
            self.cursor = next;
            self.done = next == 0;
            if !found.is_empty() {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}
