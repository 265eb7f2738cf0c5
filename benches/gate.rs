//! The per-app gate's cost as its memory fills: every send calls `AppGate::admit`, which keeps
//! each message admitted within the last hour and compares the new message's audience with all
//! of them. This drives the library's gate directly (no daemon, no network) with the burst
//! pattern of `benches/burst.rs`: bursts of N messages to N distinct users, and times each burst.
//! Every message is admitted at once (no limit is reached), so the time is pure bookkeeping.
//!
//! ```sh
//! cargo bench --bench gate -- --per-burst 1000 --bursts 30
//! ```

mod common;

use std::time::Instant;

use common::*;
use wecom_notify::gate::{AppGate, Audience};
use wecom_notify::message::Recipients;

const USAGE: &str = "\
cargo bench --bench gate -- [options]
  --per-burst N   messages per burst, each to its own user (default 1000)
  --bursts K      bursts (default 30); the gate remembers an hour, i.e. 360 bursts of a 10 s schedule";

fn main() {
    let args = Args::parse(USAGE, &["per-burst", "bursts"]);
    args.only_flags(&[], USAGE);
    let per_burst: usize = args.num("per-burst", 1000);
    let bursts: usize = args.num("bursts", 30);
    print_machine();
    let audiences: Vec<Audience> = (0..per_burst)
        .map(|i| Audience::of(&Recipients::users_only(&[format!("user{i:05}")])))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let gate = AppGate::default();
    println!("gate: bursts of {per_burst} admits to distinct users");
    let mut times = Vec::new();
    runtime.block_on(async {
        for k in 1..=bursts {
            let start = Instant::now();
            for audience in &audiences {
                // `admit` returns the time it took, bookkeeping included: never a real wait here.
                let waited = gate.admit(audience).await;
                assert!(waited.as_secs() < 1, "a limit was reached: {waited:?}");
            }
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            times.push(ms);
            if k == 1 || k % 5 == 0 || k == bursts {
                println!(
                    "burst {k:>3} (gate holds {:>6} messages before it): {ms:>8.1} ms, {:.1} µs per admit",
                    (k - 1) * per_burst,
                    ms * 1000.0 / per_burst as f64
                );
            }
        }
    });
    if bursts >= 2 {
        // Linear in the messages held: extrapolate to a full hour of 10 s bursts.
        let last = times[bursts - 1];
        let slope = (last - times[0]) / (bursts - 1) as f64;
        let hour = times[0] + slope * 359.0;
        println!(
            "growth {slope:.2} ms per burst held; a burst after an hour of 10 s bursts (360 held) would take ~{:.1} s of one core",
            hour / 1000.0
        );
    }
}
