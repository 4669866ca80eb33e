//! A bound on what a pickle may make the decoder build, checked before `serde-pickle` sees it.
//!
//! `serde-pickle` builds and converts values recursively, so a record nested a few thousand
//! levels deep overflows the worker's stack (an abort, not an error), and memo references
//! (`GET` of an earlier value) are expanded each time they are used, so a small record can
//! stand for an exponential number of nodes. This module walks the opcode stream once, without
//! recursion, simulating the unpickler's stack over a graph of the objects it would build (no
//! values), and refuses the stream when the finished graph nests deeper, or expands (memo
//! references counted as the copies they become) to more values, than its limits.
//! Anything it cannot follow (an unknown opcode, a truncated argument, a stack underflow) is
//! refused too: the decoder would refuse it anyway.

/// Limits for one pickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickleLimits {
    /// Deepest nesting of containers (an ARQ record of a dedup2d job is 3 deep).
    pub max_depth: u32,
    /// Most values the decoded tree may hold, memo references counted as the copies they become.
    pub max_nodes: u64,
}

/// The limits ARQ records are decoded under: far above what any ARQ producer writes, far below
/// what exhausts a worker's stack (about 1,500 levels on a 2 MiB thread stack).
pub const ARQ_RECORD_LIMITS: PickleLimits = PickleLimits {
    max_depth: 64,
    max_nodes: 100_000,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleGuardError {
    #[error("pickle nests deeper than {0} levels")]
    TooDeep(u32),
    #[error("pickle expands to more than {0} values")]
    TooLarge(u64),
    #[error("pickle opcode 0x{op:02x} at byte {at} is unknown")]
    UnknownOpcode { op: u8, at: usize },
    #[error("pickle is truncated at byte {0}")]
    Truncated(usize),
    #[error("pickle is malformed at byte {0} (stack underflow or bad memo reference)")]
    Malformed(usize),
    #[error("pickle has no STOP opcode")]
    NoStop,
    #[error("pickle refers to itself (a recursive structure)")]
    Recursive,
}

/// A slot of the simulated stack: a mark, or an object (an index into the object graph).
enum Slot {
    Mark,
    Value(usize),
}

/// How an opcode's argument is laid out in the stream.
enum Arg {
    None,
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// Text up to a newline (protocol 0); `GLOBAL`/`INST` have two such lines.
    Lines(usize),
}

/// What an opcode does to the stack, in terms of shapes.
enum Effect {
    Push,
    Pop(usize),
    PopMark,
    Dup,
    /// Pops `n` values and pushes one container holding them.
    Build(usize),
    /// Pops everything down to the mark and pushes one container holding it.
    BuildFromMark,
    /// Pops `n` values and adds them to the container below them.
    AddTo(usize),
    /// Pops everything down to the mark and adds it to the container below the mark.
    AddFromMark,
    Memoize,
    Get,
    Nothing,
}

fn opcode(op: u8) -> Option<(Arg, Effect)> {
    use Arg::*;
    use Effect::*;
    Some(match op {
        b'(' => (None, Effect::Nothing), // MARK: handled by the caller
        b'.' => (None, Effect::Nothing), // STOP: handled by the caller
        b'0' => (None, Pop(1)),
        b'1' => (None, PopMark),
        b'2' => (None, Dup),
        b'F' | b'I' | b'L' | b'P' | b'S' | b'V' => (Lines(1), Push),
        b'J' => (Fixed(4), Push),
        b'G' => (Fixed(8), Push),
        b'K' => (Fixed(1), Push),
        b'M' => (Fixed(2), Push),
        b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | 0x8f | 0x97 => (None, Push),
        b'Q' => (None, Build(1)),
        b'R' | 0x81 | 0x93 => (None, Build(2)),
        0x92 => (None, Build(3)),
        b'T' | b'X' | b'B' => (Counted(4), Push),
        b'U' | b'C' | 0x8c | 0x8a => (Counted(1), Push),
        0x8b => (Counted(4), Push),
        0x8d | 0x8e | 0x96 => (Counted(8), Push),
        b'a' | b'b' => (None, AddTo(1)),
        b's' => (None, AddTo(2)),
        b'e' | b'u' | 0x90 => (None, AddFromMark),
        b'c' => (Lines(2), Push),
        b'i' => (Lines(2), BuildFromMark),
        b'd' | b'l' | b't' | b'o' | 0x91 => (None, BuildFromMark),
        0x85 => (None, Build(1)),
        0x86 => (None, Build(2)),
        0x87 => (None, Build(3)),
        b'g' => (Lines(1), Get),
        b'h' => (Fixed(1), Get),
        b'j' => (Fixed(4), Get),
        b'p' => (Lines(1), Memoize),
        b'q' => (Fixed(1), Memoize),
        b'r' => (Fixed(4), Memoize),
        0x94 => (None, Memoize),
        0x80 => (Fixed(1), Effect::Nothing),
        0x95 => (Fixed(8), Effect::Nothing),
        0x98 => (None, Effect::Nothing),
        0x82 => (Fixed(1), Push),
        0x83 => (Fixed(2), Push),
        0x84 => (Fixed(4), Push),
        _ => return Option::None,
    })
}

/// The stack simulation. Objects are kept as a graph (each container lists its children), not
/// as sizes: a container can be memoized empty and filled later, and every memo reference then
/// stands for what it holds in the end, so depth and size are measured on the finished graph.
struct Machine {
    stack: Vec<Slot>,
    /// Children of each object (empty for a scalar).
    objects: Vec<Vec<usize>>,
    memo: std::collections::HashMap<u64, usize>,
}

impl Machine {
    fn new_object(&mut self, children: Vec<usize>) -> usize {
        self.objects.push(children);
        self.objects.len() - 1
    }

    fn pop(&mut self, at: usize) -> Result<usize, PickleGuardError> {
        match self.stack.pop() {
            Some(Slot::Value(o)) => Ok(o),
            _ => Err(PickleGuardError::Malformed(at)),
        }
    }

    fn top(&self, at: usize) -> Result<usize, PickleGuardError> {
        match self.stack.last() {
            Some(Slot::Value(o)) => Ok(*o),
            _ => Err(PickleGuardError::Malformed(at)),
        }
    }

    /// Pops the values above the topmost mark, and the mark.
    fn pop_to_mark(&mut self, at: usize) -> Result<Vec<usize>, PickleGuardError> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Value(o)) => items.push(o),
                Some(Slot::Mark) => return Ok(items),
                None => return Err(PickleGuardError::Malformed(at)),
            }
        }
    }

    fn pop_n(&mut self, n: usize, at: usize) -> Result<Vec<usize>, PickleGuardError> {
        (0..n).map(|_| self.pop(at)).collect()
    }

    fn push(&mut self, children: Vec<usize>) {
        let o = self.new_object(children);
        self.stack.push(Slot::Value(o));
    }

    fn apply(&mut self, effect: Effect, arg: &[u8], at: usize) -> Result<(), PickleGuardError> {
        match effect {
            Effect::Push => self.push(Vec::new()),
            Effect::Pop(n) => {
                self.pop_n(n, at)?;
            }
            Effect::PopMark => {
                self.pop_to_mark(at)?;
            }
            Effect::Dup => {
                let o = self.top(at)?;
                self.stack.push(Slot::Value(o));
            }
            Effect::Build(n) => {
                let items = self.pop_n(n, at)?;
                self.push(items);
            }
            Effect::BuildFromMark => {
                let items = self.pop_to_mark(at)?;
                self.push(items);
            }
            Effect::AddTo(n) => {
                let items = self.pop_n(n, at)?;
                let target = self.top(at)?;
                self.objects[target].extend(items);
            }
            Effect::AddFromMark => {
                let items = self.pop_to_mark(at)?;
                let target = self.top(at)?;
                self.objects[target].extend(items);
            }
            Effect::Memoize => {
                let o = self.top(at)?;
                // MEMOIZE takes the next free slot, as Python's `len(memo)`.
                let key = if arg.is_empty() {
                    self.memo.len() as u64
                } else {
                    memo_key(arg)
                };
                self.memo.insert(key, o);
            }
            Effect::Get => {
                let o = *self
                    .memo
                    .get(&memo_key(arg))
                    .ok_or(PickleGuardError::Malformed(at))?;
                self.stack.push(Slot::Value(o));
            }
            Effect::Nothing => {}
        }
        Ok(())
    }

    /// Depth and expanded size of `root`, by an explicit-stack post-order walk (no recursion);
    /// a reference cycle is refused (the decoder refuses it too).
    fn measure(&self, root: usize, limits: PickleLimits) -> Result<(), PickleGuardError> {
        #[derive(Clone, Copy)]
        enum Mark {
            New,
            Open,
            Done { depth: u32, nodes: u64 },
        }
        let mut marks = vec![Mark::New; self.objects.len()];
        let mut walk = vec![root];
        while let Some(&o) = walk.last() {
            match marks[o] {
                Mark::Done { .. } => {
                    walk.pop();
                }
                Mark::New => {
                    marks[o] = Mark::Open;
                    for &c in &self.objects[o] {
                        match marks[c] {
                            Mark::Open => return Err(PickleGuardError::Recursive),
                            Mark::New => walk.push(c),
                            Mark::Done { .. } => {}
                        }
                    }
                }
                Mark::Open => {
                    let (mut depth, mut nodes) = (0u32, 1u64);
                    for &c in &self.objects[o] {
                        match marks[c] {
                            Mark::Done { depth: d, nodes: n } => {
                                depth = depth.max(d + 1);
                                nodes = nodes.saturating_add(n);
                            }
                            _ => return Err(PickleGuardError::Recursive),
                        }
                    }
                    if depth > limits.max_depth {
                        return Err(PickleGuardError::TooDeep(limits.max_depth));
                    }
                    if nodes > limits.max_nodes {
                        return Err(PickleGuardError::TooLarge(limits.max_nodes));
                    }
                    marks[o] = Mark::Done { depth, nodes };
                    walk.pop();
                }
            }
        }
        Ok(())
    }
}

/// Memo slots are numbered; the same slot can be written as text, 1 byte or 4 bytes.
fn memo_key(arg: &[u8]) -> u64 {
    let n: u64 = match arg.len() {
        1 => u64::from(arg[0]),
        4 => u64::from(u32::from_le_bytes([arg[0], arg[1], arg[2], arg[3]])),
        _ => std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX),
    };
    n
}

/// Reads the argument of an opcode starting at `pos`; returns it and the position after it.
fn read_arg(bytes: &[u8], pos: usize, arg: &Arg) -> Result<(usize, usize), PickleGuardError> {
    let take = |from: usize, n: usize| {
        from.checked_add(n)
            .filter(|end| *end <= bytes.len())
            .ok_or(PickleGuardError::Truncated(from))
    };
    match *arg {
        Arg::None => Ok((pos, pos)),
        Arg::Fixed(n) => take(pos, n).map(|end| (pos, end)),
        Arg::Counted(width) => {
            let end = take(pos, width)?;
            let mut len = [0u8; 8];
            len[..width].copy_from_slice(&bytes[pos..end]);
            let len = usize::try_from(u64::from_le_bytes(len))
                .map_err(|_| PickleGuardError::Truncated(end))?;
            take(end, len).map(|after| (end, after))
        }
        Arg::Lines(lines) => {
            let mut end = pos;
            for _ in 0..lines {
                let nl = bytes[end..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .ok_or(PickleGuardError::Truncated(end))?;
                end += nl + 1;
            }
            Ok((pos, end))
        }
    }
}

/// Walks the whole stream; `Ok` when it stays within `limits` and ends with `STOP`.
pub fn check(bytes: &[u8], limits: PickleLimits) -> Result<(), PickleGuardError> {
    let mut m = Machine {
        stack: Vec::new(),
        objects: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    let mut pos = 0;
    while pos < bytes.len() {
        let at = pos;
        let op = bytes[pos];
        pos += 1;
        match op {
            b'.' => {
                let root = m.top(at)?;
                return m.measure(root, limits);
            }
            b'(' => {
                m.stack.push(Slot::Mark);
                continue;
            }
            _ => {}
        }
        let (arg, effect) = opcode(op).ok_or(PickleGuardError::UnknownOpcode { op, at })?;
        let (start, end) = read_arg(bytes, pos, &arg)?;
        // A line argument's memo index is the text before the newline.
        let value = match arg {
            Arg::Lines(_) => &bytes[start..end.saturating_sub(1)],
            _ => &bytes[start..end],
        };
        m.apply(effect, value, at)?;
        pos = end;
    }
    Err(PickleGuardError::NoStop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        for _ in 0..depth {
            p.extend_from_slice(b"]("); // EMPTY_LIST MARK
        }
        p.extend_from_slice(b"N"); // innermost value
        p.extend(std::iter::repeat_n(b'e', depth)); // APPENDS
        p.push(b'.');
        p
    }

    #[test]
    fn a_shallow_list_passes_and_a_deep_one_is_refused_without_recursion() {
        assert_eq!(check(&nested_lists(10), ARQ_RECORD_LIMITS), Ok(()));
        assert_eq!(
            check(&nested_lists(100_000), ARQ_RECORD_LIMITS),
            Err(PickleGuardError::TooDeep(64))
        );
    }

    #[test]
    fn deep_tuples_are_refused() {
        let mut p = vec![0x80, 2, b'N'];
        p.extend(std::iter::repeat_n(0x85, 2000)); // TUPLE1
        p.push(b'.');
        assert_eq!(
            check(&p, ARQ_RECORD_LIMITS),
            Err(PickleGuardError::TooDeep(64))
        );
    }

    #[test]
    fn memo_doubling_is_refused() {
        // x = [None]; then 40 times: x = (x, x) via MEMOIZE/GET.
        let mut p = vec![0x80, 4, b']', b'N', b'a', 0x94];
        for i in 0..40u32 {
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(0x86); // TUPLE2
            p.push(0x94); // MEMOIZE
        }
        p.push(b'.');
        assert!(matches!(
            check(&p, ARQ_RECORD_LIMITS),
            Err(PickleGuardError::TooLarge(_))
        ));
    }

    #[test]
    fn a_chain_built_through_memo_references_is_measured_when_finished() {
        // 2,000 empty lists, each memoized, then list i gets list i+1 appended via GETs.
        let mut p = vec![0x80, 4];
        for _ in 0..2000 {
            p.extend_from_slice(&[b']', 0x94]);
        }
        for i in 0..1999u32 {
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'j');
            p.extend_from_slice(&(i + 1).to_le_bytes());
            p.extend_from_slice(b"a0");
        }
        p.extend_from_slice(b"j\x00\x00\x00\x00.");
        assert_eq!(
            check(&p, ARQ_RECORD_LIMITS),
            Err(PickleGuardError::TooDeep(64))
        );
    }

    #[test]
    fn a_self_reference_is_refused() {
        // l = []; l.append(l)
        let p = b"\x80\x04]\x94h\x00a.";
        assert_eq!(
            check(p, ARQ_RECORD_LIMITS),
            Err(PickleGuardError::Recursive)
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(
            check(b"\x80\x02\xff.", ARQ_RECORD_LIMITS),
            Err(PickleGuardError::UnknownOpcode { op: 0xff, at: 2 })
        ));
        assert_eq!(
            check(b"\x80\x02X\xff\xff\x00\x00ab", ARQ_RECORD_LIMITS),
            Err(PickleGuardError::Truncated(7))
        );
        assert_eq!(
            check(b"\x80\x02a.", ARQ_RECORD_LIMITS),
            Err(PickleGuardError::Malformed(2))
        );
        assert_eq!(
            check(b"\x80\x02N", ARQ_RECORD_LIMITS),
            Err(PickleGuardError::NoStop)
        );
    }
}
