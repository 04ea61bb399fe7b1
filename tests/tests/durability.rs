//! Durability under crashes: 5 nodes, N=3, W=2. Writer threads issue thousands of
//! unique-key writes (count from `RINGLAB_WRITES`, default 2000) to random live nodes
//! and record which were acknowledged, while a fault thread `kill -9`s a random node
//! every couple of seconds and restarts it. After the faults stop, every acknowledged
//! write must be readable with R=3: zero lost. The seed (`RINGLAB_SEED`) replays the
//! same choices.

use rand::{Rng, SeedableRng};
use ringlab_tests::{scenario_rng, Cluster, ClusterOpts, Http};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
/// The writes are spread over at least this long, so several faults hit them.
const WRITE_SPAN: Duration = Duration::from_secs(12);

#[test]
fn no_acknowledged_write_is_lost_under_kill9() {
    let (seed, mut rng) = scenario_rng("durability");
    let writes: usize = std::env::var("RINGLAB_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let c = Cluster::start(5, ClusterOpts::fast());
    let urls: Vec<String> = (0..c.nodes.len()).map(|i| c.url(i)).collect();
    let up: Arc<Vec<AtomicBool>> =
        Arc::new((0..urls.len()).map(|_| AtomicBool::new(true)).collect());
    let cluster = Arc::new(Mutex::new(c));
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));

    // Writers: key i gets the unique value "v{i}-{seed}".
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (urls, up, next) = (urls.clone(), up.clone(), next.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng.gen());
        writers.push(std::thread::spawn(move || {
            let http = Http::new(Duration::from_secs(3));
            let mut acked = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= writes {
                    break;
                }
                // Pace: write i is not sent before its share of WRITE_SPAN.
                let due = started + WRITE_SPAN.mul_f64(i as f64 / writes as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let live: Vec<usize> = (0..urls.len())
                    .filter(|&n| up[n].load(Ordering::SeqCst))
                    .collect();
                // At most one node is down at a time, so `live` has 4 or 5 entries.
                let n = live[rng.gen_range(0..live.len())];
                let key = format!("dur-{seed}-{i}");
                let value = format!("v{i}-{seed}");
                match http.put(&urls[n], &key, value.as_bytes(), None, Some(2)) {
                    Ok(r) if r.status == 204 => acked.push((key, value)),
                    _ => failed += 1,
                }
            }
            (acked, failed)
        }));
    }

    // Faults: every 0.8–2 s kill a random node, restart it 0.3–1.2 s later.
    let fault = {
        let (cluster, up, done) = (cluster.clone(), up.clone(), done.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng.gen());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.gen_range(800..2000)));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let victim = rng.gen_range(0..up.len());
                up[victim].store(false, Ordering::SeqCst);
                cluster.lock().unwrap().kill9(victim);
                kills += 1;
                std::thread::sleep(Duration::from_millis(rng.gen_range(300..1200)));
                cluster.lock().unwrap().start_node(victim);
                up[victim].store(true, Ordering::SeqCst);
            }
            kills
        })
    };

    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.join().expect("writer thread");
        acked.extend(a);
        failed += f;
    }
    done.store(true, Ordering::SeqCst);
    let kills = fault.join().expect("fault thread");
    eprintln!(
        "durability: {} writes acknowledged, {failed} failed, {kills} kill -9s (seed {seed})",
        acked.len()
    );
    assert!(kills >= 3, "too few faults ({kills}) to mean anything");
    assert!(
        acked.len() >= writes / 2,
        "only {} of {writes} writes acknowledged: the cluster was mostly unavailable",
        acked.len()
    );

    // Faults over: all nodes up again and agreeing.
    let mut c = match Arc::try_unwrap(cluster) {
        Ok(m) => m.into_inner().unwrap(),
        Err(_) => panic!("cluster still shared"),
    };
    c.wait_formed();

    // Every acknowledged write is readable with R=3 (503s while peers settle are retried).
    let http = Http::new(Duration::from_secs(5));
    let mut lost = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    for (k, (key, value)) in acked.iter().enumerate() {
        let node = k % c.nodes.len();
        let reply = loop {
            match http.get_kv(&c.url(node), key, Some(3)) {
                Ok(r) if r.status != 503 => break r,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "R=3 reads still failing after the faults stopped: {other:?}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        if !reply.values().iter().any(|v| v == value.as_bytes()) {
            lost.push(format!(
                "{key}: status {} {:?}",
                reply.status,
                reply.values()
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost (seed {seed}, replay with RINGLAB_SEED={seed}):\n{}",
        lost.len(),
        acked.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    c.assert_no_panics();
}
