//! Work spread over the machine's cores, with its results in order: the runs of a large
//! config's schedules (validated by `config`, described by `check`).

/// How many threads to use for work that divides freely: as many as the machine has cores,
/// at least 1 and at most `max`.
pub fn threads(max: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, max.max(1))
}

/// `work(item, state)` for every item: the first on the calling thread, each other on a
/// thread of its own, with a `state()` made for it on the calling thread (per-thread caches
/// that cannot be shared). The results come in the items' order. An item whose thread cannot
/// be started is worked on the calling thread; a panic in a thread is resumed here.
pub fn in_order<T, S, R>(
    items: &[T],
    mut state: impl FnMut() -> S,
    work: impl Fn(&T, S) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    S: Send,
    R: Send,
{
    let Some((first, rest)) = items.split_first() else {
        return Vec::new();
    };
    let work = &work;
    std::thread::scope(|scope| {
        let started: Vec<_> = rest
            .iter()
            .map(|item| {
                let own = state();
                let thread = std::thread::Builder::new()
                    .name("worker".into())
                    .spawn_scoped(scope, move || work(item, own));
                (item, thread)
            })
            .collect();
        let mut results = Vec::with_capacity(items.len());
        results.push(work(first, state()));
        for (item, thread) in started {
            results.push(match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => work(item, state()),
            });
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_once_on_a_thread_of_its_own_and_the_results_keep_their_order() {
        let items: Vec<usize> = (0..6).collect();
        let mut made = 0;
        let results = in_order(
            &items,
            || {
                made += 1;
                made
            },
            |item, state| (*item * 10, state, std::thread::current().id()),
        );
        let values: Vec<usize> = results.iter().map(|r| r.0).collect();
        assert_eq!(values, [0, 10, 20, 30, 40, 50]);
        let mut states: Vec<usize> = results.iter().map(|r| r.1).collect();
        states.sort_unstable();
        assert_eq!(states, [1, 2, 3, 4, 5, 6], "one state per item");
        let ids: std::collections::HashSet<_> = results.iter().map(|r| r.2).collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(results[0].2, std::thread::current().id(), "the first here");
        assert!(in_order(&[] as &[usize], || (), |i, ()| *i).is_empty());
        assert!((1..=4).contains(&super::threads(4)));
        assert_eq!(super::threads(0), 1);
    }

    #[test]
    #[should_panic(expected = "item 3")]
    fn a_panic_in_a_thread_reaches_the_caller() {
        in_order(&[1, 2, 3], || (), |item, ()| assert_ne!(*item, 3, "item 3"));
    }
}
