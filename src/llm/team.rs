//! A team of threads for one forward pass on the CPU, as llama.cpp runs its
//! graph: every thread walks the same layers, takes its share of each
//! operation, and meets the others at a barrier before the next one.
//!
//! A decoding step of a small model is some 300 short operations. Handing each
//! one to a thread pool (rayon) costs a wake-up and a sleep per operation on
//! each side, which a profile of the pool-based pass put at a quarter of a
//! step's time, in the kernel's scheduler. Here the threads are started once
//! per pass (scoped, so they borrow the pass's buffers) and wait for each other
//! by spinning on one atomic counter (a few hundred nanoseconds), yielding
//! their core only when a wait drags on (more threads than free cores).
//!
//! Buffers the threads share are [`Shared`] slices: within a phase (between
//! two barriers) each part of a buffer is written by one thread at most, and
//! read only in later phases.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for `n` threads; poisoned when one of them panics, so
/// that the others stop waiting and panic too instead of spinning forever.
struct Barrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("another thread of the forward pass panicked");
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Poisons the barrier if its thread unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// One thread's view of the team.
pub struct Member<'a> {
    pub index: usize,
    pub threads: usize,
    barrier: &'a Barrier,
    /// The task counter every member draws from, never reset (see [`Member::tasks`]).
    next: &'a AtomicUsize,
    /// Where the current phase's tasks start on `next`.
    base: Cell<usize>,
}

impl Member<'_> {
    /// Wait until every member gets here: what each wrote before is visible
    /// to all after.
    pub fn sync(&self) {
        self.barrier.wait();
    }

    /// This member's contiguous share of `0..n`.
    pub fn share(&self, n: usize) -> Range<usize> {
        let per = n.div_ceil(self.threads);
        (self.index * per).min(n)..((self.index + 1) * per).min(n)
    }

    /// Tasks `0..n` handed out one at a time to whichever member asks first
    /// (uneven tasks, a busy core). Every member must call this for every
    /// phase, in the same order, run the iterator to its end, and
    /// [`Member::sync`] before the next phase's tasks: the counter is never
    /// reset, each member knowing where a phase starts on it because each
    /// phase takes exactly `n + threads` draws (the tasks, and one draw per
    /// member that finds none left).
    pub fn tasks(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let base = self.base.get();
        self.base.set(base + n + self.threads);
        std::iter::from_fn(move || {
            let t = self.next.fetch_add(1, Ordering::Relaxed) - base;
            (t < n).then_some(t)
        })
    }
}

/// Run `f` on `threads` threads (this one and `threads - 1` scoped ones), each
/// with its [`Member`]; returns when all have finished. A panic in any of them
/// reaches the caller.
pub fn run<F: Fn(&Member<'_>) + Sync>(threads: usize, f: F) {
    let threads = threads.max(1);
    let barrier = Barrier {
        n: threads,
        arrived: AtomicUsize::new(0),
        generation: AtomicUsize::new(0),
        poisoned: AtomicBool::new(false),
    };
    let next = AtomicUsize::new(0);
    let member = |index| Member {
        index,
        threads,
        barrier: &barrier,
        next: &next,
        base: Cell::new(0),
    };
    let body = |index| {
        let _guard = PoisonOnPanic(&barrier);
        f(&member(index));
    };
    std::thread::scope(|s| {
        for index in 1..threads {
            let body = &body;
            std::thread::Builder::new()
                .name(format!("moulin-llm-{index}"))
                .spawn_scoped(s, move || body(index))
                .expect("a thread for the forward pass");
        }
        body(0);
    });
}

/// A buffer the team shares: a slice borrowed for the pass, written and read
/// in phases separated by [`Member::sync`]. Only the parts asked for become
/// references, so two threads writing disjoint parts never alias.
pub struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through the unsafe methods below, whose callers keep the
// writes and reads of one part in different phases.
unsafe impl<T: Send> Sync for Shared<'_, T> {}
unsafe impl<T: Send> Send for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        Shared {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Safety
    /// No thread writes any of `range` in this phase.
    pub unsafe fn get(&self, range: Range<usize>) -> &[T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: inside the borrowed slice; the caller's for the rest.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }

    /// # Safety
    /// No other thread reads or writes any of `range` in this phase.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: inside the borrowed slice; the caller's for the rest.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The start of the slice, for kernels that write disjoint columns.
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_see_each_others_writes_and_tasks_are_each_run_once() {
        for threads in [1, 2, 3, 5] {
            let n = 97;
            let (mut a, mut b) = (vec![0usize; n], vec![0usize; n]);
            let (sa, sb) = (Shared::new(&mut a), Shared::new(&mut b));
            let runs = (0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>();
            run(threads, |m| {
                for round in 0..20 {
                    for t in m.tasks(n) {
                        runs[t].fetch_add(1, Ordering::Relaxed);
                        // SAFETY: task `t` alone writes element `t`.
                        unsafe { sa.get_mut(t..t + 1)[0] = t + round };
                    }
                    m.sync();
                    for i in m.share(n) {
                        // SAFETY: `a` is only read in this phase; `b`'s row
                        // `i` is this member's.
                        unsafe {
                            let j = (i + 1) % n;
                            sb.get_mut(i..i + 1)[0] = sa.get(j..j + 1)[0];
                        }
                    }
                    m.sync();
                }
            });
            assert!(
                (0..n).all(|i| b[i] == (i + 1) % n + 19),
                "{threads} threads"
            );
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 20));
        }
    }

    #[test]
    fn a_panicking_member_does_not_leave_the_others_waiting() {
        let result = std::panic::catch_unwind(|| {
            run(3, |m| {
                if m.index == 1 {
                    panic!("boom");
                }
                m.sync();
            })
        });
        assert!(result.is_err());
    }
}
