//! The run's trace: a running hash of everything that happened (so two runs
//! of a seed can be compared bit for bit) and, when asked for, printed
//! events.

use super::kv::hash_word;

/// How much of the trace is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Nothing.
    #[default]
    Quiet,
    /// Faults, role changes, membership changes, client operations.
    Events,
    /// Also every message sent and delivered.
    Messages,
}

/// The trace of one run.
#[derive(Clone, Debug)]
pub struct Trace {
    verbosity: Verbosity,
    hash: u64,
    events: u64,
}

impl Trace {
    /// A trace that prints at `verbosity`.
    pub fn new(verbosity: Verbosity) -> Self {
        Trace { verbosity, hash: 0, events: 0 }
    }

    /// The hash of everything mixed in so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Whether messages are printed.
    pub fn shows_messages(&self) -> bool {
        self.verbosity >= Verbosity::Messages
    }

    /// Mixes numbers describing what happened into the hash.
    pub fn mix(&mut self, words: &[u64]) {
        self.hash = words.iter().fold(self.hash, |hash, word| hash_word(hash, *word));
    }

    /// Records an event; the text is built only when it is printed.
    pub fn event(&mut self, step: u64, describe: impl FnOnce() -> String) {
        self.events += 1;
        if self.verbosity >= Verbosity::Events {
            println!("[{step:>6}] {}", describe());
        }
    }

    /// Records a message event (printed only at [`Verbosity::Messages`]).
    pub fn message(&mut self, step: u64, describe: impl FnOnce() -> String) {
        if self.verbosity >= Verbosity::Messages {
            println!("[{step:>6}]   {}", describe());
        }
    }

    /// Number of events recorded.
    pub fn event_count(&self) -> u64 {
        self.events
    }
}
