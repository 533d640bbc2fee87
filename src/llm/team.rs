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
//! their core only when a wait drags on (more threads than free cores). A
//! phase's tasks go first to the member whose contiguous share they are in,
//! then to whichever member runs out of its own ([`Member::tasks`]), so that
//! drawing a task costs no trip between cores.
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
    /// One task counter per member, each on its own cache line, never reset
    /// (see [`Member::tasks`]).
    counters: &'a [Counter],
    /// Per counter, where the current phase's draws start on it.
    bases: Vec<Cell<usize>>,
}

/// A member's task counter, alone on its cache lines (and their adjacent
/// pair, which AMD and Intel cores fetch together), so that drawing from it
/// stays in its own core's cache until another member comes to steal.
#[repr(align(128))]
struct Counter(AtomicUsize);

impl Member<'_> {
    /// Wait until every member gets here: what each wrote before is visible
    /// to all after.
    pub fn sync(&self) {
        self.barrier.wait();
    }

    /// This member's contiguous share of `0..n`.
    pub fn share(&self, n: usize) -> Range<usize> {
        share(self.index, self.threads, n)
    }

    /// Tasks `0..n`, handed out one at a time: first this member's own
    /// contiguous [`Member::share`] of them, in order, then whatever the other
    /// members have not started yet (uneven tasks, a busy core).
    ///
    /// Each member draws from a counter of its own, so a task costs no trip
    /// between cores until the members steal at a phase's end. Drawing from
    /// one counter that all members shared cost a cache line's trip per task:
    /// about 30 ns between cores that share a last-level cache, but 150 ns or
    /// more when the host places the virtual cores farther apart, which this
    /// development machine does for seconds at a time. The same own range also
    /// makes a task's next rows the ones this member takes next, for the
    /// kernels to prefetch.
    ///
    /// Every member must call this for every phase, in the same order, run the
    /// iterator to its end, and [`Member::sync`] before the next phase's
    /// tasks. The counters are never reset: each member knows where a phase
    /// starts on each of them because a phase draws exactly the counter's
    /// share plus one draw per member that finds none left there.
    pub fn tasks(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let threads = self.threads;
        (0..threads)
            .map(move |k| (self.index + k) % threads)
            .flat_map(move |c| {
                // Every member visits every counter once a phase.
                let (range, base) = (share(c, threads, n), self.bases[c].get());
                self.bases[c].set(base + range.len() + threads);
                std::iter::from_fn(move || {
                    let t = self.counters[c].0.fetch_add(1, Ordering::Relaxed) - base;
                    (t < range.len()).then(|| range.start + t)
                })
            })
    }
}

/// Member `index`'s contiguous share of `0..n` among `threads`.
fn share(index: usize, threads: usize, n: usize) -> Range<usize> {
    let per = n.div_ceil(threads);
    (index * per).min(n)..((index + 1) * per).min(n)
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
    let counters: Vec<Counter> = (0..threads).map(|_| Counter(AtomicUsize::new(0))).collect();
    let member = |index| Member {
        index,
        threads,
        barrier: &barrier,
        counters: &counters,
        bases: (0..threads).map(|_| Cell::new(0)).collect(),
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
    fn phases_of_any_size_run_every_task_once() {
        // Phases of changing sizes, fewer tasks than members among them: each
        // counter's start for the next phase must follow from the sizes alone.
        let sizes = [7, 0, 1, 2, 33, 3, 96, 5, 4, 1000];
        for threads in [1, 2, 3, 4] {
            let runs: Vec<Vec<AtomicUsize>> = sizes
                .iter()
                .map(|&n| (0..n).map(|_| AtomicUsize::new(0)).collect())
                .collect();
            run(threads, |m| {
                for _ in 0..3 {
                    for (runs, &n) in runs.iter().zip(&sizes) {
                        for t in m.tasks(n) {
                            runs[t].fetch_add(1, Ordering::Relaxed);
                        }
                        m.sync();
                    }
                }
            });
            for (runs, n) in runs.iter().zip(sizes) {
                let counts: Vec<usize> = runs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
                assert_eq!(counts, vec![3; n], "{threads} threads, {n} tasks");
            }
        }
    }

    #[test]
    fn a_member_takes_the_tasks_another_has_not_started() {
        // Member 1 comes to the phase only once member 0 has run out of
        // tasks: member 0 must have taken member 1's share too.
        let n = 50;
        let done = AtomicBool::new(false);
        let taken = [AtomicUsize::new(0), AtomicUsize::new(0)];
        run(2, |m| {
            if m.index == 1 {
                while !done.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
            }
            for _ in m.tasks(n) {
                taken[m.index].fetch_add(1, Ordering::Relaxed);
            }
            if m.index == 0 {
                done.store(true, Ordering::Release);
            }
            m.sync();
            // The next phase starts where it should on both counters.
            for _ in m.tasks(n) {
                taken[m.index].fetch_add(1, Ordering::Relaxed);
            }
            m.sync();
        });
        let (first, second) = (
            taken[0].load(Ordering::Relaxed),
            taken[1].load(Ordering::Relaxed),
        );
        assert!(first >= n, "member 0 took {first} of the first phase's {n}");
        assert_eq!(first + second, 2 * n);
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
