//! Work spread over the machine's cores, results in input order.
//!
//! A load or a plan is a handful of independent pieces (files, lists) of very different
//! sizes, so the workers take the next piece from a shared counter rather than a fixed share:
//! one list of a million contacts does not leave the other core idle. The result never
//! depends on which worker did what.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` applied to each item, on up to every core, in the order of `items`. A panic in `f`
/// is resumed on the caller's thread.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return mine;
                        };
                        mine.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Like [`map`], for work that can fail: the first error in input order, as a sequential
/// loop would have returned it.
pub fn try_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    map(items, f).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_whatever_their_cost() {
        let items: Vec<u64> = (0..200).collect();
        let out = map(&items, |&i| {
            // Uneven work, so the workers finish out of order.
            std::thread::sleep(std::time::Duration::from_micros((i % 7) * 100));
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_in_input_order_is_returned() {
        let items: Vec<u32> = (0..50).collect();
        let got = try_map(&items, |&i| if i % 10 == 7 { Err(i) } else { Ok(i) });
        assert_eq!(got, Err(7));
    }
}
