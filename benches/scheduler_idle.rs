//! What tokio-cron-scheduler costs at idle when it holds one job per schedule, as the daemon's
//! coarse alarms would once every alarm survives: N one-shot jobs due in an hour (added one at
//! a time, so that none is lost to its 200-slot channels), then this process's CPU over a
//! window. The crate lists every job's metadata every 500 ms, so the cost grows with N.
//!
//! ```sh
//! cargo bench --bench scheduler_idle -- --jobs 1000,10000,100000 --seconds 10
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_cron_scheduler::{Job, JobScheduler};

const USAGE: &str = "\
cargo bench --bench scheduler_idle -- [options]
  --jobs LIST     job counts (default 1000,10000,100000)
  --seconds S     idle window per count (default 10)";

fn main() {
    let args = Args::parse(USAGE, &["jobs", "seconds"]);
    args.only_flags(&[], USAGE);
    let counts: Vec<usize> = args.list("jobs", "1000,10000,100000");
    let seconds: u64 = args.num("seconds", 10);
    print_machine();
    let pid = std::process::id() as i32;
    for n in counts {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (add_s, cpu_add) = runtime.block_on(async {
            let scheduler = JobScheduler::new().await.unwrap();
            scheduler.start().await.unwrap();
            let cpu0 = proc_cpu_seconds(pid).unwrap_or(0.0);
            let start = Instant::now();
            for _ in 0..n {
                let at = std::time::Instant::now() + Duration::from_secs(3600);
                let job =
                    Job::new_one_shot_at_instant_async(at, |_, _| Box::pin(async {})).unwrap();
                scheduler.add(job).await.unwrap();
            }
            let add_s = start.elapsed().as_secs_f64();
            let cpu_add = proc_cpu_seconds(pid).unwrap_or(0.0) - cpu0;
            std::mem::forget(scheduler);
            (add_s, cpu_add)
        });
        let (rss_before, _) = proc_memory_kib(pid).unwrap_or((0, 0));
        let (cpu, peak) = cpu_over(pid, Duration::from_secs(seconds));
        println!(
            "{n:>7} one-shot jobs: added one by one in {add_s:.2} s ({cpu_add:.2} CPU s); idle {:.2} % of a core (worst second {:.1} %); process RSS {:.1} MiB",
            cpu / seconds as f64 * 100.0,
            peak * 100.0,
            mib(rss_before)
        );
        runtime.shutdown_background();
    }
}
