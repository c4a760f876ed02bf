//! `make load`: a real doppel (the release binary, demo data, loopback only) takes 200
//! concurrent copy requests (on kept-alive connections) while 500 clients hold
//! `/api/v1/events` open. Prints POST
//! latency (p50, p99), event delivery lag (server publish -> client receipt, p50, p99) and
//! doppel's peak memory, and a baseline measured just before in the same run: the same
//! burst of requests, refused once read. A script, not a test: it prints figures and never
//! fails on them.
//! LOAD_POSTS, LOAD_SUBSCRIBERS and LOAD_ROUNDS change the numbers; LOAD_PERF=<file>
//! records a `perf` profile of doppel during the copy bursts (LOAD_PERF_GRAPH=dwarf for
//! call graphs of a build without frame pointers; `fp` by default).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use memchr::memmem;

#[path = "../tests/common/process.rs"]
mod process;

/// Searchers built once: building a `memmem` finder per search cost the client more CPU
/// than doppel spent sending the burst (perf), and the client shares doppel's two cores.
struct Finders {
    end: memmem::Finder<'static>,
    at: memmem::Finder<'static>,
    status: memmem::Finder<'static>,
    succeeded: memmem::Finder<'static>,
}

static FIND: LazyLock<Finders> = LazyLock::new(|| Finders {
    end: memmem::Finder::new(b"\n\n"),
    at: memmem::Finder::new(b"\"at\":"),
    status: memmem::Finder::new(b"\nevent: status\n"),
    succeeded: memmem::Finder::new(b"\"status\":\"succeeded\""),
});

/// When an event was published, and whether it is a job's success, read straight from its
/// frame: 500 subscribers receive 100,000 events within the burst on the same two cores,
/// and parsing each whole would make the client's own work what the lag measures. (The
/// JSON of events is checked by the API tests.)
fn read_event(block: &[u8]) -> Option<(i64, bool)> {
    // `at` comes before the job in an event, so the first one is the event's.
    let from = FIND.at.find(block)? + 5;
    let digits = block[from..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let at = std::str::from_utf8(&block[from..from + digits])
        .ok()?
        .parse()
        .ok()?;
    // Only a status event (its kind is on the line before `data:`) is searched further.
    let success =
        FIND.status.find(&block[..from]).is_some() && FIND.succeeded.find(&block[from..]).is_some();
    Some((at, success))
}

/// Reads the whole events at the start of `data` into `lags` (publish time, lag) and counts
/// successes; says how many bytes it used (the rest is an event still arriving).
fn read_events(data: &[u8], lags: &mut Vec<(i64, f64)>, successes: &mut u64) -> usize {
    let mut start = 0;
    while let Some(end) = FIND.end.find(&data[start..]) {
        let block = &data[start..start + end];
        start += end + 2;
        // A keep-alive comment has no `at`.
        if let Some((at, success)) = read_event(block) {
            lags.push((at, (now_ms() - at) as f64));
            *successes += u64::from(success);
        }
    }
    start
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CPU time a process's threads have used so far, in milliseconds, leaving out threads
/// named `skip` (doppel's engine threads: a job copying beside the burst is not what a copy
/// request costs). From each thread's `schedstat` (nanoseconds): `stat`'s clock ticks
/// (10 ms) were too coarse for a burst that costs doppel about 30 ms.
fn cpu_ms(pid: u32, skip: Option<&str>) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut ns = 0.0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if skip == Some(comm.trim_end()) {
            continue;
        }
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    ns / 1e6
}

/// doppel's CPU so far, its engine threads left out.
fn doppel_cpu_ms(pid: u32) -> f64 {
    cpu_ms(pid, Some("doppel-job"))
}

/// This process's CPU so far.
fn own_cpu_ms() -> f64 {
    cpu_ms(std::process::id(), None)
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Lag percentiles of the events published in each `TIMELINE_MS` slot after `start_ms`, as
/// table rows: shows whether lag comes from the burst of POSTs or from the jobs running.
fn lag_timeline(timed: &[(i64, f64)], start_ms: i64) -> Vec<String> {
    const TIMELINE_MS: i64 = 250;
    let mut slots: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for &(at, lag) in timed {
        let slot = (at - start_ms).max(0) / TIMELINE_MS;
        slots.entry(slot).or_default().push(lag);
    }
    slots
        .into_iter()
        .map(|(slot, mut lags)| {
            lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!(
                "| {}-{} | {} | {:.0} | {:.0} | {:.0} |",
                slot * TIMELINE_MS,
                (slot + 1) * TIMELINE_MS,
                lags.len(),
                percentile(&lags, 0.5),
                percentile(&lags, 0.99),
                percentile(&lags, 1.0)
            )
        })
        .collect()
}

/// The client that posts copy requests.
struct Poster {
    client: reqwest::Client,
    base: String,
    token: String,
    source_id: String,
    project: String,
    /// doppel's process id, to read its CPU time.
    server: u32,
}

impl Poster {
    /// Opens one kept-alive connection per request (as clients do, so what is measured is
    /// doppel answering, not TCP handshakes on a loaded loopback), then sends `posts` copy
    /// requests at once (names `load-<prefix><n>`). Says each one's time (ms), how many
    /// were accepted, how long the burst took, and the CPU doppel and this process used.
    /// `prefix` None: the baseline, requests doppel refuses once their JSON is read (an
    /// unknown field): what any request costs on this machine, with nothing to copy.
    async fn burst(&self, posts: usize, prefix: Option<&str>) -> Burst {
        let warm: Vec<_> = (0..posts)
            .map(|_| {
                let client = self.client.clone();
                let url = format!("{}/healthz", self.base);
                tokio::spawn(async move { client.get(url).send().await })
            })
            .collect();
        for w in warm {
            let _ = w.await;
        }
        let (server_cpu0, client_cpu0) = (doppel_cpu_ms(self.server), own_cpu_ms());
        let started = Instant::now();
        let url = format!("{}/api/v1/containers/{}/copy", self.base, self.source_id);
        let handles: Vec<_> = (0..posts)
            .map(|i| {
                let mut body = serde_json::json!({"target_project_id": self.project});
                match prefix {
                    Some(prefix) => body["name"] = format!("load-{prefix}{i}").into(),
                    None => body["unknown_field"] = format!("load-{i}").into(),
                }
                let request = self.client.post(&url).bearer_auth(&self.token).json(&body);
                tokio::spawn(async move {
                    let t = Instant::now();
                    // The answer read whole, as a client does for the job's address (an
                    // answer dropped unread closes its connection).
                    let resp = request.send().await.unwrap();
                    let status = resp.status().as_u16();
                    resp.bytes().await.unwrap();
                    (t.elapsed().as_secs_f64() * 1000.0, status)
                })
            })
            .collect();
        let mut post_ms = Vec::new();
        let mut accepted = 0;
        for h in handles {
            let (ms, status) = h.await.unwrap();
            post_ms.push(ms);
            accepted += usize::from(status == 202);
        }
        Burst {
            took: started.elapsed(),
            server_cpu: doppel_cpu_ms(self.server) - server_cpu0,
            client_cpu: own_cpu_ms() - client_cpu0,
            post_ms,
            accepted,
        }
    }
}

struct Burst {
    post_ms: Vec<f64>,
    accepted: usize,
    took: Duration,
    server_cpu: f64,
    client_cpu: f64,
}

#[tokio::main]
async fn main() {
    let posts = env_or("LOAD_POSTS", 200);
    let rounds = env_or("LOAD_ROUNDS", 1).max(1);
    let subscribers = env_or("LOAD_SUBSCRIBERS", 500);
    // One admin posts every copy and opens every stream here: lift the per-user and
    // per-project caps (a real crowd is many users). Environment, not flags, so builds that
    // predate the caps (scripts/load-compare.sh) start the same way.
    for var in [
        "DOPPEL_MAX_QUEUED_JOBS_PER_USER",
        "DOPPEL_MAX_QUEUED_JOBS_PER_PROJECT",
        "DOPPEL_MAX_STREAMS_PER_USER",
    ] {
        std::env::set_var(var, "1000000");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = process::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = process::serve(&data, port, true);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    process::wait_up(&client, &base).await;
    let token = process::admin_token(&data);
    let containers = process::get_json(&client, format!("{base}/api/v1/containers"), &token).await;
    let pick = |name: &str| -> serde_json::Value {
        containers["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let source = pick("edge-proxy");
    let source_id = source["id"].as_str().unwrap().to_string();
    let project = source["project_id"].as_str().unwrap().to_string();
    println!(
        "doppel load: {posts} concurrent copy requests, {subscribers} SSE subscribers, {base}"
    );

    // Subscribers: each records the lag of every event it receives:
    // (publish time in ms since the epoch, lag in ms) of every event received.
    // Room for about four events per job per subscriber from the start: growing a vector
    // of millions of entries while the burst is measured would cost the client page faults.
    let lags = Arc::new(Mutex::new(Vec::<(i64, f64)>::with_capacity(
        posts * rounds * subscribers * 4,
    )));
    let finals = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let (lags, finals, connected) = (lags.clone(), finals.clone(), connected.clone());
        subs.push(tokio::spawn(async move {
            let resp = client
                .get(format!("{base}/api/v1/events"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            connected.fetch_add(1, Ordering::SeqCst);
            let mut stream = resp.bytes_stream();
            // The part of an event that has not fully arrived. Whole events are read in
            // place; only one cut between two chunks is copied, to join its parts.
            let mut partial: Vec<u8> = Vec::new();
            let mut mine = Vec::with_capacity(1024);
            let mut successes = 0;
            while let Some(Ok(chunk)) = stream.next().await {
                let mut rest: &[u8] = &chunk;
                if !partial.is_empty() {
                    // Where the cut event ends in this chunk (its blank line may itself be
                    // cut in two).
                    let end = if partial.ends_with(b"\n") && rest.starts_with(b"\n") {
                        Some(1)
                    } else {
                        FIND.end.find(rest).map(|i| i + 2)
                    };
                    let Some(end) = end else {
                        partial.extend_from_slice(rest);
                        continue;
                    };
                    partial.extend_from_slice(&rest[..end]);
                    read_events(&partial, &mut mine, &mut successes);
                    partial.clear();
                    rest = &rest[end..];
                }
                let used = read_events(rest, &mut mine, &mut successes);
                partial.extend_from_slice(&rest[used..]);
                finals.fetch_add(std::mem::take(&mut successes), Ordering::Relaxed);
                if mine.len() >= 64 {
                    lags.lock().unwrap().append(&mut mine);
                }
            }
            lags.lock().unwrap().append(&mut mine);
        }));
    }
    while connected.load(Ordering::SeqCst) < subscribers as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The posting client has a thread and runtime of its own: in real use the subscribers
    // are other clients (browsers), and sharing one runtime would make each POST's time
    // include this process's own queue of SSE frames to parse.
    let started = Instant::now();
    let started_ms = now_ms();
    let whole_run_cpu0 = (doppel_cpu_ms(server.id()), own_cpu_ms());
    let server_pid = server.id();
    let poster = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let poster = Poster {
                    client: reqwest::Client::builder()
                        .pool_max_idle_per_host(1024)
                        .build()
                        .unwrap(),
                    base,
                    token,
                    source_id,
                    project,
                    server: server_pid,
                };
                let baseline = poster.burst(posts, None).await;
                assert_eq!(baseline.accepted, 0, "the baseline's requests are refused");
                // LOAD_PERF=<file>: a CPU profile of doppel during the copy bursts only.
                let profile = std::env::var("LOAD_PERF").ok().map(|file| {
                    let graph = std::env::var("LOAD_PERF_GRAPH").unwrap_or_else(|_| "fp".into());
                    let perf = std::process::Command::new("perf")
                        .args(["record", "--call-graph", &graph, "-F", "9999", "-o", &file])
                        .arg("-p")
                        .arg(server_pid.to_string())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("perf runs");
                    // (perf takes a moment to attach to every thread.)
                    std::thread::sleep(Duration::from_millis(500));
                    perf
                });
                let mut burst = poster.burst(posts, Some("")).await;
                // LOAD_ROUNDS > 1 repeats the burst on the same connections (for profiles,
                // and steadier figures).
                for round in 1..rounds {
                    let more = poster.burst(posts, Some(&format!("r{round}-"))).await;
                    burst.post_ms.extend(more.post_ms);
                    burst.accepted += more.accepted;
                    burst.took += more.took;
                    burst.server_cpu += more.server_cpu;
                    burst.client_cpu += more.client_cpu;
                }
                if let Some(mut perf) = profile {
                    let _ = std::process::Command::new("kill")
                        .args(["-INT", &perf.id().to_string()])
                        .status();
                    let _ = perf.wait();
                }
                (baseline, burst)
            })
    });
    let (
        Burst {
            post_ms: mut baseline_ms,
            server_cpu: baseline_server_cpu,
            client_cpu: baseline_client_cpu,
            ..
        },
        Burst {
            mut post_ms,
            accepted,
            took: posting,
            server_cpu,
            client_cpu,
        },
    ) = tokio::task::spawn_blocking(move || poster.join().unwrap())
        .await
        .unwrap();
    // Wait until every subscriber has seen every job succeed (or give up after 10 minutes).
    let want = (posts * rounds * subscribers) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while finals.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = started.elapsed();
    let whole_run_cpu = (
        doppel_cpu_ms(server.id()) - whole_run_cpu0.0,
        own_cpu_ms() - whole_run_cpu0.1,
    );
    let rss = peak_rss_mb(server.id());
    server.kill().unwrap();
    server.wait().unwrap();
    for s in subs {
        let _ = s.await;
    }

    post_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    baseline_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let timed = lags.lock().unwrap().clone();
    let timeline = lag_timeline(&timed, started_ms);
    let mut lags: Vec<f64> = timed.iter().map(|&(_, lag)| lag).collect();
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| copy requests accepted (202) | {accepted} of {} in {:.2} s |",
        posts * rounds,
        posting.as_secs_f64()
    );
    println!(
        "| all {} copies done, seen by all {subscribers} subscribers | {:.1} s |",
        posts * rounds,
        all_done.as_secs_f64()
    );
    println!(
        "| CPU while posting: doppel (engine threads left out) / this client | {server_cpu:.0} ms / {client_cpu:.0} ms |"
    );
    println!();
    let per_post = |ms: f64| ms * 1000.0 / (posts * rounds) as f64;
    println!("doppel_cpu_per_post_us {:.0}", per_post(server_cpu));
    println!("client_cpu_per_post_us {:.0}", per_post(client_cpu));
    // What a refused request costs each side: the part of a copy request's cost that is
    // HTTP, the token check and JSON.
    let per_refused = |ms: f64| ms * 1000.0 / posts as f64;
    println!(
        "baseline_doppel_cpu_per_post_us {:.0}",
        per_refused(baseline_server_cpu)
    );
    println!(
        "baseline_client_cpu_per_post_us {:.0}",
        per_refused(baseline_client_cpu)
    );
    // The whole run's CPU (requests, jobs' bookkeeping and every event stream; engine
    // threads left out) per thousand events delivered: steadier than latencies on a shared
    // machine, for comparing builds.
    if !lags.is_empty() {
        let per_k_events = |ms: f64| ms * 1000.0 / lags.len() as f64;
        println!(
            "doppel_cpu_per_1k_events_ms {:.1}",
            per_k_events(whole_run_cpu.0)
        );
        println!(
            "client_cpu_per_1k_events_ms {:.1}",
            per_k_events(whole_run_cpu.1)
        );
    }
    println!("| events delivered | {} |", lags.len());
    println!();
    println!("Event lag by when the event was published (ms after the burst began):");
    println!();
    println!("| published | events | lag p50 | lag p99 | lag max |");
    println!("|---|---|---|---|---|");
    for row in timeline {
        println!("{row}");
    }
    println!();
    println!("post_p50_ms {:.1}", percentile(&post_ms, 0.50));
    println!("post_p99_ms {:.1}", percentile(&post_ms, 0.99));
    // The same burst of requests refused once read, just before: what HTTP, the token
    // check and JSON cost here, with the client on the same cores.
    println!("baseline_post_p99_ms {:.1}", percentile(&baseline_ms, 0.99));
    println!(
        "post_p99_vs_baseline {:.1}",
        percentile(&post_ms, 0.99) / percentile(&baseline_ms, 0.99)
    );
    println!("event_lag_p50_ms {:.1}", percentile(&lags, 0.50));
    println!("event_lag_p90_ms {:.1}", percentile(&lags, 0.90));
    println!("event_lag_p99_ms {:.1}", percentile(&lags, 0.99));
    println!("event_lag_max_ms {:.1}", percentile(&lags, 1.0));
    println!("doppel_peak_rss_mb {rss:.1}");
}
