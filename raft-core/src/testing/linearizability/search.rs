//! The search of one key's sub-history: Wing & Gong's algorithm with Lowe's
//! memoisation, extended for indeterminate operations. The parent module's
//! documentation describes the algorithm; this file implements it.
//!
//! Indeterminate operations multiply the search space if handled naively:
//! every timed-out write could be placed before any later operation, and
//! each choice is a distinct set of linearized operations. These rules keep
//! that in check without changing any verdict:
//!
//! * Indeterminate operations are tried only after every determinate
//!   candidate, so a configuration is usually first reached with as few of
//!   them as possible.
//! * A configuration is pruned if a *finished* one (explored to failure) has
//!   the same determinate operations and value and a subset of its
//!   indeterminate operations: anything the new one could still do, the
//!   finished one could too, by leaving the extra indeterminate operations
//!   for the end, where they affect nothing. Configurations still on the
//!   stack do not prune, because their exploration is not complete and so
//!   proves nothing.
//! * The search looks only for linearizations in a normal form, which
//!   loses nothing: if a linearization exists, one exists in which no
//!   indeterminate operation can be dropped and none can move later. In
//!   such a one, every indeterminate operation changes the key's state (its
//!   value or its checkpoints), and the operation right after it depends on
//!   that change: from the state before the indeterminate one it would not
//!   be accepted with the same resulting state (else the indeterminate one
//!   could be dropped; a write or a delete right after a change of the
//!   value alone is the common case), and it is not accepted without effect
//!   from both the state before and the state after (else the two could
//!   swap). This rule depends on the last lift and the state before it, so
//!   this "obligation" is part of a configuration: pruning then depends on
//!   the configuration alone, never on the path to it, which is what keeps
//!   the memoisation sound. A configuration without an obligation covers
//!   the same one with an obligation, not the other way round. The effect
//!   is that an indeterminate operation is tried only right before an
//!   operation that observes it, instead of at every step.
//! * Values that no operation compares against (no read returned them, no
//!   compare-and-set expected them) behave identically in the model, so
//!   they are all replaced by one placeholder before the search. A
//!   checkpoint remembers values and a rollback puts them back, but neither
//!   compares them, so this holds for them too. The
//!   indeterminate operations then fall into classes with identical effect
//!   (all unobserved writes are one class), and within a class only the
//!   earliest-invoked pending one is ever tried: in any linearization, two
//!   members of a class can swap places, or a later one be replaced by an
//!   earlier one, because the earlier one was invoked first and has no
//!   completion to respect.
//! * A finished configuration also covers one that used *fewer* members of
//!   a class, as long as that class never ran short while the finished one
//!   was explored (see [`Classes`]). Without this the search meets the
//!   configurations that used more timed-out writes first and explores
//!   every count of them again.
//!
//! Measured on a failing history of 2,000 operations with 30 timeouts:
//! over ten million configurations without these rules, about 300,000 with
//! them, against about 55,000 for the same history without timeouts.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::{size_of, size_of_val};

use super::{map_written_values, observed_values, step, KeyOperation, KeyState, Model, SearchBudget};

/// How one key's search ended.
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable(BestPrefix),
    Unknown(String),
}

/// A search's result and how much work it took (for tests of its cost).
pub(super) struct SearchReport {
    pub(super) result: SearchResult,
    /// Read by the tests of the search's cost.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) explored_states: u64,
}

/// Searches for a linearization of one key's operations under `model`.
pub(super) fn search_key(operations: &[KeyOperation], model: Model, budget: SearchBudget) -> SearchReport {
    let (operations, initial) = canonicalize(operations, model.initial);
    let model = Model { initial, ..model };
    let mut search = Search::new(&operations, model, budget);
    let result = search.run();
    SearchReport { result, explored_states: search.cache.configurations }
}

/// Replaces every value that no operation compares against by one
/// placeholder, a value that is not compared against either. See the
/// module documentation for why this changes no verdict.
fn canonicalize(operations: &[KeyOperation], initial: Option<u64>) -> (Vec<KeyOperation>, Option<u64>) {
    let observed: HashSet<u64> = operations
        .iter()
        .flat_map(|operation| observed_values(operation.op, operation.outcome))
        .flatten()
        .collect();
    // At most `observed.len()` values are taken, so one of the first
    // `observed.len() + 1` is free; the fallback is never used.
    let placeholder = (0..=u64::MAX).find(|value| !observed.contains(value)).unwrap_or(u64::MAX);
    let canonical = |value: u64| if observed.contains(&value) { value } else { placeholder };
    let operations = operations
        .iter()
        .map(|operation| KeyOperation { op: map_written_values(operation.op, canonical), ..*operation })
        .collect();
    (operations, initial.map(canonical))
}

/// The deepest stack the search reached, kept for the explanation.
#[derive(Default)]
pub(super) struct BestPrefix {
    /// Positions (in the key's sub-history) in linearization order.
    pub(super) operations: Vec<usize>,
    /// How much of the current stack is known to equal `operations`: the
    /// lowest depth popped to since the last copy. Copying only above it
    /// makes the bookkeeping cost at most one copy per lift overall.
    stable_depth: usize,
}

impl BestPrefix {
    fn observe(&mut self, stack: &[Frame]) {
        if stack.len() <= self.operations.len() {
            return;
        }
        self.operations.truncate(self.stable_depth);
        self.operations.extend(stack[self.stable_depth..].iter().map(|f| f.operation));
        self.stable_depth = stack.len();
    }

    fn note_pop(&mut self, depth: usize) {
        self.stable_depth = self.stable_depth.min(depth);
    }
}

/// One choice on the search stack.
#[derive(Clone, Copy)]
struct Frame {
    operation: usize,
    /// The key's state before the operation, restored on backtracking.
    state_before: KeyState,
    /// For an indeterminate operation, the deadline its candidates were
    /// scanned under, to resume the scan after it on backtracking.
    deadline: u64,
    /// The configuration entered, marked finished on backtracking.
    configuration: CacheSlot,
}

/// What a configuration requires of the next lift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obligation {
    /// Any candidate may come next.
    None,
    /// The configuration was reached by an indeterminate operation that
    /// changed the state from `before`; the next operation must depend on
    /// that change, or the indeterminate one was useless there.
    DependOn { before: KeyState },
}

impl Obligation {
    /// Whether `operation`, taking the state from `state` to `after`, may
    /// come next. An operation does not depend on the change from `before`
    /// if from `before` it would be accepted and reach `after` all the same
    /// (a write after a change of the value alone: the indeterminate
    /// operation could be dropped), or if it would be accepted without
    /// effect from `before` as well as from `state` (the indeterminate
    /// operation could come after it instead).
    fn allows(self, model: Model, operation: KeyOperation, state: KeyState, after: KeyState) -> bool {
        let Obligation::DependOn { before } = self else {
            return true;
        };
        match step(model, before, operation.op, operation.outcome) {
            Some(from_before) if from_before == after => false,
            Some(from_before) => !(after == state && from_before == before),
            None => true,
        }
    }
}

/// Where the scan for the next candidate stands.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the determinate event list.
    Event(usize),
    /// At a node of the indeterminate list; candidates must have been
    /// invoked by `deadline`, the earliest pending completion.
    Indeterminate { node: usize, deadline: u64 },
}

/// The state of one key's search.
///
/// Events live in one arena: node `2 * i` is the call of operation `i` and
/// node `2 * i + 1` its return. Determinate operations' calls and returns
/// form one circular list in time order, headed by node `2 * n`.
/// Indeterminate operations have no return; their calls form a second
/// circular list in invoke order, headed by node `2 * n + 1`.
struct Search<'a> {
    operations: &'a [KeyOperation],
    /// Each operation's bit: its rank among the determinate operations, or
    /// among the indeterminate ones.
    slots: Vec<usize>,
    classes: Classes,
    /// Reused buffer for the candidates of a stuck configuration.
    candidates: Vec<usize>,
    next: Vec<usize>,
    previous: Vec<usize>,
    determinate_head: usize,
    indeterminate_head: usize,
    /// Bitset of the linearized determinate operations, by slot.
    determinate_linearized: Vec<u64>,
    /// Zobrist hash of `determinate_linearized`: the XOR of one random word
    /// per member, updated in O(1) on every lift and backtrack.
    determinate_hash: u64,
    /// Bitset of the linearized indeterminate operations, by slot.
    indeterminate_linearized: Vec<u64>,
    state: KeyState,
    /// The specification; its initial value is already canonical.
    model: Model,
    stack: Vec<Frame>,
    /// Determinate operations not yet linearized; the search succeeds at 0.
    remaining_determinate: usize,
    cache: Cache,
    best: BestPrefix,
    budget: SearchBudget,
}

impl<'a> Search<'a> {
    fn new(operations: &'a [KeyOperation], model: Model, budget: SearchBudget) -> Self {
        let (mut determinate, mut indeterminate) = (0, 0);
        let slots: Vec<usize> = operations
            .iter()
            .map(|operation| {
                let counter =
                    if operation.is_indeterminate() { &mut indeterminate } else { &mut determinate };
                *counter += 1;
                *counter - 1
            })
            .collect();
        let classes = Classes::new(operations, &slots);
        let determinate_head = 2 * operations.len();
        let mut search = Search {
            operations,
            slots,
            classes,
            candidates: Vec::new(),
            next: vec![0; determinate_head + 2],
            previous: vec![0; determinate_head + 2],
            determinate_head,
            indeterminate_head: determinate_head + 1,
            determinate_linearized: vec![0; determinate.div_ceil(64)],
            determinate_hash: 0,
            indeterminate_linearized: vec![0; indeterminate.div_ceil(64)],
            state: KeyState::new(model.initial),
            model,
            stack: Vec::new(),
            remaining_determinate: determinate,
            cache: Cache::default(),
            best: BestPrefix::default(),
            budget,
        };
        search.link_events();
        search
    }

    /// Builds both lists in time order. Calls sort before returns at equal
    /// times because touching operations are concurrent, not ordered.
    fn link_events(&mut self) {
        let mut determinate: Vec<(u64, bool, usize)> = Vec::new();
        let mut indeterminate: Vec<(u64, bool, usize)> = Vec::new();
        for (position, operation) in self.operations.iter().enumerate() {
            match operation.complete {
                Some(complete) => {
                    determinate.push((operation.invoke, false, 2 * position));
                    determinate.push((complete, true, 2 * position + 1));
                }
                None => indeterminate.push((operation.invoke, false, 2 * position)),
            }
        }
        for (head, mut events) in
            [(self.determinate_head, determinate), (self.indeterminate_head, indeterminate)]
        {
            events.sort_unstable();
            let mut last = head;
            for &(_, _, node) in &events {
                self.next[last] = node;
                self.previous[node] = last;
                last = node;
            }
            self.next[last] = head;
            self.previous[head] = last;
        }
    }

    fn run(&mut self) -> SearchResult {
        let mut cursor = Cursor::Event(self.next[self.determinate_head]);
        loop {
            if self.remaining_determinate == 0 {
                return SearchResult::Linearizable;
            }
            if let Some(reason) = self.budget_exhausted() {
                return SearchResult::Unknown(reason);
            }
            cursor = match cursor {
                Cursor::Event(node) if node != self.determinate_head && node % 2 == 0 => {
                    if self.try_lift(node / 2, 0) {
                        self.restart()
                    } else {
                        Cursor::Event(self.next[node])
                    }
                }
                Cursor::Event(node) => {
                    // The first return event: its operation must take effect
                    // by its completion. Indeterminate operations invoked by
                    // then are the remaining candidates.
                    let deadline = self.event_time(node);
                    self.note_limiting_classes(deadline);
                    Cursor::Indeterminate { node: self.next[self.indeterminate_head], deadline }
                }
                Cursor::Indeterminate { node, deadline }
                    if node != self.indeterminate_head && self.operations[node / 2].invoke <= deadline =>
                {
                    if self.try_lift(node / 2, deadline) {
                        self.restart()
                    } else {
                        Cursor::Indeterminate { node: self.next[node], deadline }
                    }
                }
                // No candidate left: the last choice was wrong.
                Cursor::Indeterminate { .. } => match self.backtrack() {
                    Some(resume) => resume,
                    None => return SearchResult::NotLinearizable(std::mem::take(&mut self.best)),
                },
            };
        }
    }

    fn restart(&self) -> Cursor {
        Cursor::Event(self.next[self.determinate_head])
    }

    /// The time of a node of the determinate list: a return's completion.
    /// The head is reached only when no determinate operation is left,
    /// which ends the search first, but it stands for "no deadline".
    fn event_time(&self, node: usize) -> u64 {
        self.operations.get(node / 2).and_then(|operation| operation.complete).unwrap_or(u64::MAX)
    }

    fn budget_exhausted(&self) -> Option<String> {
        if self.cache.configurations >= self.budget.max_explored_states {
            return Some(format!(
                "explored {} configurations, the budget's max_explored_states, without deciding",
                self.cache.configurations
            ));
        }
        if self.cache.bytes > self.budget.max_cache_bytes {
            return Some(format!(
                "the cache of explored configurations grew to about {} bytes, over the budget's \
                 max_cache_bytes of {}, after {} configurations",
                self.cache.bytes, self.budget.max_cache_bytes, self.cache.configurations
            ));
        }
        None
    }

    /// Linearizes `operation` next if the model accepts it and the resulting
    /// configuration is not covered by one explored already; returns
    /// whether it did.
    fn try_lift(&mut self, operation: usize, deadline: u64) -> bool {
        let record = self.operations[operation];
        let indeterminate = record.is_indeterminate();
        if indeterminate && !self.earliest_of_class(operation) {
            return false;
        }
        let Some(after) = step(self.model, self.state, record.op, record.outcome) else {
            return false;
        };
        // An indeterminate operation without effect here is equivalent to
        // one placed at the end, which leaving it out already covers.
        if (indeterminate && after == self.state)
            || !self.obligation().allows(self.model, record, self.state, after)
        {
            return false;
        }
        // Lifting an indeterminate operation obliges the next lift to
        // depend on its change, so the obligation is part of the
        // configuration.
        let obligation =
            if indeterminate { Obligation::DependOn { before: self.state } } else { Obligation::None };
        self.toggle(operation);
        let entered = self.cache.enter(
            Key {
                determinate: &self.determinate_linearized,
                determinate_hash: self.determinate_hash,
                state: after,
                obligation,
            },
            &self.indeterminate_linearized,
            &self.classes.of_slot,
        );
        let configuration = match entered {
            Ok(configuration) => configuration,
            Err(covering) => {
                // This configuration fails for the reasons the covering one
                // did, so it inherits the classes that limited that one.
                self.classes.merge_limiting(self.cache.limiting(covering));
                self.toggle(operation);
                return false;
            }
        };
        self.stack.push(Frame { operation, state_before: self.state, deadline, configuration });
        self.state = after;
        self.unlink(2 * operation);
        self.classes.push_configuration();
        if indeterminate {
            self.classes.linearized[self.classes.of_operation[operation]] += 1;
        } else {
            self.unlink(2 * operation + 1);
            self.remaining_determinate -= 1;
        }
        self.best.observe(&self.stack);
        true
    }

    /// Undoes the last lift; returns where to resume the scan, or `None` if
    /// there was nothing to undo.
    fn backtrack(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        let operation = frame.operation;
        let limiting = self.classes.pop_configuration();
        self.cache.finish(frame.configuration, limiting);
        // Relink in the reverse order of unlinking, as dancing links need.
        let indeterminate = self.operations[operation].is_indeterminate();
        if indeterminate {
            self.classes.linearized[self.classes.of_operation[operation]] -= 1;
        } else {
            self.relink(2 * operation + 1);
            self.remaining_determinate += 1;
        }
        self.relink(2 * operation);
        self.toggle(operation);
        self.state = frame.state_before;
        self.best.note_pop(self.stack.len());
        let node = self.next[2 * operation];
        Some(if indeterminate {
            Cursor::Indeterminate { node, deadline: frame.deadline }
        } else {
            Cursor::Event(node)
        })
    }

    /// Whether indeterminate `operation` is the earliest pending member of
    /// its class, the only one the search tries.
    fn earliest_of_class(&self, operation: usize) -> bool {
        let class = self.classes.of_operation[operation];
        self.classes.earliest_pending(class) == Some(operation)
    }

    /// Records, for the current configuration, each class that has no
    /// member left to lift by `deadline` although one might have helped:
    /// the model accepts it here with an effect, and some operation could
    /// follow it under the obligation it creates. Only such classes can
    /// make this configuration's exploration depend on how many members
    /// of a class were used before (see [`Classes`]).
    ///
    /// The operations that could follow are the determinate candidates and
    /// one member of *every* class invoked by the deadline, available or
    /// not: a configuration that used fewer of two classes could lift one
    /// and then the other, and the check must not miss that chain.
    fn note_limiting_classes(&mut self, deadline: u64) {
        let mut followers = std::mem::take(&mut self.candidates);
        followers.clear();
        let mut node = self.next[self.determinate_head];
        while node != self.determinate_head && node % 2 == 0 {
            followers.push(node / 2);
            node = self.next[node];
        }
        let invoked =
            |member: Option<usize>| member.is_some_and(|member| self.operations[member].invoke <= deadline);
        // Classes are numbered in the order of their first member's invoke,
        // so those invoked by the deadline come first.
        let classes_invoked = (0..self.classes.members.len())
            .find(|&class| !invoked(self.classes.members[class].first().copied()))
            .unwrap_or(self.classes.members.len());
        // Whether one of them can follow depends on the change (see
        // `could_follow`), not on the kind of operation alone: a write
        // depends on an earlier change to the checkpoints, not the value.
        followers
            .extend((0..classes_invoked).filter_map(|class| self.classes.members[class].first().copied()));
        // Whether some follower depends on a change to each state, by state:
        // the classes share few distinct states, so this saves most scans.
        let mut helps_by_value: Vec<(KeyState, bool)> = Vec::new();
        for class in 0..classes_invoked {
            if invoked(self.classes.earliest_pending(class)) {
                continue;
            }
            let Some(&representative) = self.classes.members[class].first() else {
                continue;
            };
            let operation = self.operations[representative];
            let Some(after) = step(self.model, self.state, operation.op, operation.outcome) else {
                continue;
            };
            if after == self.state || !self.obligation().allows(self.model, operation, self.state, after) {
                continue;
            }
            let helps = match helps_by_value.iter().find(|(value, _)| *value == after) {
                Some(&(_, helps)) => helps,
                None => {
                    let helps = self.could_follow(after, &followers);
                    helps_by_value.push((after, helps));
                    helps
                }
            };
            if helps {
                self.classes.mark_limiting(class);
            }
        }
        self.candidates = followers;
    }

    /// Whether one of `followers` could come right after an indeterminate
    /// operation that changed the state from the current one to `after`.
    fn could_follow(&self, after: KeyState, followers: &[usize]) -> bool {
        let obligation = Obligation::DependOn { before: self.state };
        followers.iter().any(|&follower| {
            let next = self.operations[follower];
            step(self.model, after, next.op, next.outcome).is_some_and(|next_after| {
                obligation.allows(self.model, next, after, next_after)
                    && (!next.is_indeterminate() || next_after != after)
            })
        })
    }

    /// What the current configuration requires of the next lift.
    fn obligation(&self) -> Obligation {
        match self.stack.last() {
            Some(frame) if self.operations[frame.operation].is_indeterminate() => {
                Obligation::DependOn { before: frame.state_before }
            }
            _ => Obligation::None,
        }
    }

    fn toggle(&mut self, operation: usize) {
        let slot = self.slots[operation];
        let bits = if self.operations[operation].is_indeterminate() {
            &mut self.indeterminate_linearized
        } else {
            self.determinate_hash ^= zobrist(slot as u64);
            &mut self.determinate_linearized
        };
        bits[slot / 64] ^= 1 << (slot % 64);
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }
}

/// The indeterminate operations, grouped into classes of identical
/// (canonical) operations, and the bookkeeping of which classes limited
/// the search.
///
/// Within a class only the earliest pending member is ever lifted, so the
/// members linearized are always the first ones and a configuration is
/// characterised by how many of each class it used. Using fewer leaves more
/// for later, so a configuration normally covers only those that used at
/// least as many of every class. But if the exploration of a finished
/// configuration never wanted a member of class `K` when none was left, it
/// would have failed just the same with more of `K` left, and so it also
/// covers configurations that used fewer of `K`. Without this, a key with
/// many timed-out writes, which form one class, is explored once for every
/// count of them used, as the search meets higher counts first.
struct Classes {
    /// Each operation's class (unused for determinate operations).
    of_operation: Vec<usize>,
    /// Each indeterminate slot's class.
    of_slot: Vec<usize>,
    /// Each class's members in invoke order, the order of the
    /// indeterminate list.
    members: Vec<Vec<usize>>,
    /// How many members of each class are linearized.
    linearized: Vec<usize>,
    /// Words in a bitset over classes.
    words: usize,
    /// For the root and each configuration on the stack, a bitset of the
    /// classes that limited its exploration so far, one after the other.
    limiting: Vec<u64>,
}

impl Classes {
    fn new(operations: &[KeyOperation], slots: &[usize]) -> Self {
        let mut indeterminate: Vec<usize> =
            (0..operations.len()).filter(|&position| operations[position].is_indeterminate()).collect();
        indeterminate.sort_by_key(|&position| (operations[position].invoke, position));
        let mut class_by_op = HashMap::new();
        let mut of_operation = vec![0; operations.len()];
        let mut of_slot = vec![0; indeterminate.len()];
        let mut members: Vec<Vec<usize>> = Vec::new();
        // Classes are numbered in the order of their first member's invoke,
        // which lets a scan stop at the first class not yet invoked.
        for position in indeterminate {
            let class = *class_by_op.entry(operations[position].op).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            of_operation[position] = class;
            of_slot[slots[position]] = class;
            members[class].push(position);
        }
        let words = members.len().div_ceil(64);
        Classes {
            of_operation,
            of_slot,
            linearized: vec![0; members.len()],
            members,
            words,
            limiting: vec![0; words],
        }
    }

    /// The member of `class` that may be lifted next.
    fn earliest_pending(&self, class: usize) -> Option<usize> {
        self.members.get(class)?.get(*self.linearized.get(class)?).copied()
    }

    fn push_configuration(&mut self) {
        self.limiting.resize(self.limiting.len() + self.words, 0);
    }

    /// Ends the current configuration: returns its limiting classes, which
    /// its parent inherits.
    fn pop_configuration(&mut self) -> Box<[u64]> {
        let start = self.limiting.len().saturating_sub(self.words);
        let finished: Box<[u64]> = self.limiting.split_off(start).into();
        self.merge_limiting(&finished);
        trim(&finished)
    }

    fn mark_limiting(&mut self, class: usize) {
        let start = self.limiting.len().saturating_sub(self.words);
        if let Some(word) = self.limiting.get_mut(start + class / 64) {
            *word |= 1 << (class % 64);
        }
    }

    fn merge_limiting(&mut self, classes: &[u64]) {
        let start = self.limiting.len().saturating_sub(self.words);
        for (word, &class_word) in self.limiting[start..].iter_mut().zip(classes) {
            *word |= class_word;
        }
    }
}

/// Names one configuration in the cache.
#[derive(Clone, Copy)]
struct CacheSlot {
    group: usize,
    variant: usize,
}

/// The configurations that share a set of linearized determinate operations
/// and a value, differing in their indeterminate operations.
///
/// The determinate bitset is stored without its leading all-ones words and
/// trailing all-zero words: the operations long finished are all linearized
/// and those far ahead none, so only a window around the concurrent ones
/// needs memory.
struct Group {
    state: KeyState,
    obligation: Obligation,
    full_words: usize,
    determinate_words: Box<[u64]>,
    variants: Vec<Variant>,
}

impl Group {
    fn new(key: &Key<'_>) -> Self {
        let full_words = key.determinate.iter().take_while(|word| **word == u64::MAX).count();
        Group {
            state: key.state,
            obligation: key.obligation,
            full_words,
            determinate_words: trim(&key.determinate[full_words..]),
            variants: Vec::new(),
        }
    }

    fn matches(&self, key: &Key<'_>) -> bool {
        let (full, rest) = key.determinate.split_at(self.full_words.min(key.determinate.len()));
        self.state == key.state
            && self.obligation == key.obligation
            && full.len() == self.full_words
            && full.iter().all(|word| *word == u64::MAX)
            && equal_trimmed(&self.determinate_words, rest)
    }

    fn heap_bytes(&self) -> u64 {
        words_bytes(&self.determinate_words)
    }

    /// The variant, if any, that covers a configuration of this group with
    /// the `indeterminate` set.
    fn covering(&self, indeterminate: &[u64], of_slot: &[usize]) -> Option<usize> {
        self.variants.iter().position(|variant| variant.covers(indeterminate, of_slot))
    }
}

/// One configuration of a group: its linearized indeterminate operations.
struct Variant {
    indeterminate_words: Box<[u64]>,
    /// Explored to failure; only finished configurations cover others.
    finished: bool,
    /// Once finished, the classes that limited its exploration.
    limiting: Box<[u64]>,
}

impl Variant {
    /// Whether a configuration with the `indeterminate` set, in the same
    /// group, needs no exploring because of this one: this one is finished,
    /// and every indeterminate operation it used that the other did not is
    /// of a class that did not limit it (see [`Classes`]). `of_slot` maps
    /// indeterminate slots to classes.
    fn covers(&self, indeterminate: &[u64], of_slot: &[usize]) -> bool {
        if !self.finished {
            // Only an ancestor can be unfinished, and it has fewer
            // operations linearized, so this is never true; it is kept for
            // the invariant's sake.
            return equal_trimmed(&self.indeterminate_words, indeterminate);
        }
        for (index, &word) in self.indeterminate_words.iter().enumerate() {
            let mut extra = word & !indeterminate.get(index).copied().unwrap_or(0);
            while extra != 0 {
                let slot = index * 64 + extra.trailing_zeros() as usize;
                extra &= extra - 1;
                let class = of_slot.get(slot).copied().unwrap_or(0);
                let limiting = self.limiting.get(class / 64).copied().unwrap_or(0);
                if limiting & (1 << (class % 64)) != 0 {
                    return false;
                }
            }
        }
        true
    }
}

/// The explored configurations, bucketed by a 64-bit hash that is already
/// uniformly distributed (Zobrist), so the map does not rehash it.
#[derive(Default)]
struct Cache {
    groups: Vec<Group>,
    buckets: HashMap<u64, Bucket, BuildHasherDefault<PassThroughHasher>>,
    /// Configurations entered: the search's measure of work.
    configurations: u64,
    /// Approximate memory held by the groups, variants and map.
    bytes: u64,
}

/// The groups of one hash: almost always one, so it is stored inline and
/// only hash collisions allocate.
struct Bucket {
    first: usize,
    others: Vec<usize>,
}

/// What identifies a group of configurations.
struct Key<'a> {
    /// Bitset of the linearized determinate operations.
    determinate: &'a [u64],
    /// Zobrist hash of `determinate`.
    determinate_hash: u64,
    state: KeyState,
    obligation: Obligation,
}

impl Key<'_> {
    fn hash(&self) -> u64 {
        self.determinate_hash ^ state_hash(self.state, self.obligation)
    }
}

impl Cache {
    /// Records a configuration as entered, unless one already recorded
    /// covers it, in which case it returns that one.
    fn enter(
        &mut self,
        key: Key<'_>,
        indeterminate: &[u64],
        of_slot: &[usize],
    ) -> Result<CacheSlot, CacheSlot> {
        if key.obligation != Obligation::None {
            // The same configuration without the obligation covers it.
            let unrestricted = Key { obligation: Obligation::None, ..key };
            if let Some(group) = self.find(&unrestricted) {
                if let Some(variant) = self.groups[group].covering(indeterminate, of_slot) {
                    return Err(CacheSlot { group, variant });
                }
            }
        }
        let group = match self.find(&key) {
            Some(group) => group,
            None => self.create(&key),
        };
        if let Some(variant) = self.groups[group].covering(indeterminate, of_slot) {
            return Err(CacheSlot { group, variant });
        }
        let indeterminate_words = trim(indeterminate);
        self.bytes += size_of::<Variant>() as u64 + words_bytes(&indeterminate_words);
        let variants = &mut self.groups[group].variants;
        let limiting = Box::default();
        variants.push(Variant { indeterminate_words, finished: false, limiting });
        self.configurations += 1;
        Ok(CacheSlot { group, variant: variants.len() - 1 })
    }

    /// Marks a configuration explored to failure, limited by the classes
    /// in `limiting`.
    fn finish(&mut self, slot: CacheSlot, limiting: Box<[u64]>) {
        self.bytes += words_bytes(&limiting);
        if let Some(variant) = self.variant_mut(slot) {
            variant.finished = true;
            variant.limiting = limiting;
        }
    }

    /// The classes that limited a finished configuration.
    fn limiting(&self, slot: CacheSlot) -> &[u64] {
        self.groups
            .get(slot.group)
            .and_then(|group| group.variants.get(slot.variant))
            .map_or(&[], |variant| &variant.limiting)
    }

    fn variant_mut(&mut self, slot: CacheSlot) -> Option<&mut Variant> {
        self.groups.get_mut(slot.group)?.variants.get_mut(slot.variant)
    }

    fn find(&self, key: &Key<'_>) -> Option<usize> {
        let bucket = self.buckets.get(&key.hash())?;
        std::iter::once(bucket.first)
            .chain(bucket.others.iter().copied())
            .find(|&group| self.groups[group].matches(key))
    }

    fn create(&mut self, key: &Key<'_>) -> usize {
        let group = Group::new(key);
        self.bytes += size_of::<Group>() as u64 + group.heap_bytes();
        self.groups.push(group);
        let index = self.groups.len() - 1;
        match self.buckets.entry(key.hash()) {
            Entry::Occupied(mut occupied) => {
                occupied.get_mut().others.push(index);
                self.bytes += size_of::<usize>() as u64;
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Bucket { first: index, others: Vec::new() });
                // The map keeps up to twice its entries' worth of slots,
                // plus a control byte each.
                self.bytes += 2 * (size_of::<(u64, Bucket)>() as u64 + 1);
            }
        }
        index
    }
}

/// The words up to the last non-zero one.
fn trim(words: &[u64]) -> Box<[u64]> {
    let used = words.iter().rposition(|word| *word != 0).map_or(0, |last| last + 1);
    words[..used].into()
}

/// Whether `trimmed` (as made by [`trim`]) and `words` hold the same bits.
fn equal_trimmed(trimmed: &[u64], words: &[u64]) -> bool {
    let (head, tail) = words.split_at(trimmed.len().min(words.len()));
    head.len() == trimmed.len() && *head == *trimmed && tail.iter().all(|word| *word == 0)
}

fn words_bytes(words: &[u64]) -> u64 {
    size_of_val(words) as u64
}

/// A hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for our keys; mix anything else anyway.
        for &byte in bytes {
            self.0 = mix(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// The SplitMix64 finaliser: a bijection that spreads every input bit over
/// the whole output.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random word of determinate slot `slot` in the Zobrist hash of a set.
fn zobrist(slot: u64) -> u64 {
    mix(slot ^ 0x5A0B_0B15_7A5E_ED00)
}

fn value_hash(value: Option<u64>) -> u64 {
    match value {
        None => mix(0xAB5E_47AB_5E47_AB5E),
        Some(value) => mix(value ^ 0x7E55_E7E5_5E7E_55E7),
    }
}

/// The hash of a key's state: its value's, then each checkpoint's
/// (absent, or what it remembered) mixed in by name.
fn key_state_hash(state: KeyState) -> u64 {
    let mut hash = value_hash(state.value);
    for name in 0..super::MAX_CHECKPOINT_NAMES {
        let slot = match state.remembered(super::CheckpointName(name as u8)) {
            None => 0x51A7_E000_0000_0000,
            Some(remembered) => value_hash(remembered),
        };
        hash = mix(hash.rotate_left(23) ^ slot ^ name as u64);
    }
    hash
}

fn state_hash(state: KeyState, obligation: Obligation) -> u64 {
    match obligation {
        Obligation::None => key_state_hash(state),
        Obligation::DependOn { before } => {
            mix(key_state_hash(state) ^ key_state_hash(before).rotate_left(17))
        }
    }
}
