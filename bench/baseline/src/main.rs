//! Baseline of the bench harness: a plain tonic client calling Python workers directly.
//!
//! No scheduler, no BEAM, no codec: the request is built once (same shape as the NIF sends:
//! one `Any{type_url: StringValue, value: <JSON>}` per parameter, a worker session id and a
//! `correlation_id` metadata entry, no `grpc-timeout` unless `--timeout-ms` is given) and cloned
//! for every call. With several endpoints, callers take a free worker from a FIFO free list
//! (capacity 1 per worker, like the pool's process profile), so the concurrency numbers are those
//! of an ideal client-side pool.
//!
//! ```text
//! snakepit_bench_baseline --endpoints unix:/tmp/x/w1.sock[,unix:/tmp/x/w2.sock...]
//!     [--tool ping] [--param name=<json>]... [--warmup 200] [--sequential 2000]
//!     [--concurrency 1,4,16,32,64] [--calls 2000] [--threads 1] [--timeout-ms 0]
//!     [--samples] [--quiet] [--serve]
//! ```
//!
//! Prints one JSON object on stdout (latencies in microseconds); progress goes to stderr.
//! With `--serve` it stays up after the warm-up, prints `ready`, and runs one command per stdin
//! line (`seq N`: N sequential calls with raw samples; `spawn N`: the same calls handed from a
//! plain thread to the runtime and back; `engine N`: the same calls through
//! `snakepit_core::engine::Engine` from a plain thread; `level C N`: N calls from C callers),
//! answering each with one JSON line, until stdin closes. The bench harness uses this to
//! interleave short rounds of the baseline with rounds of Snakepit, and to split Snakepit's
//! added latency into thread hand-off, engine, and BEAM + NIF + Elixir.

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost_types::Any;
use snakepit_core::engine::{
    Chunk, Engine, EngineConfig, Outcome, PoolEvents, ReplyTarget, SubmitRequest,
};
use snakepit_core::pb::bridge_service_client::BridgeServiceClient;
use snakepit_core::pb::ExecuteToolRequest;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

const PARAM_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
const MAX_MESSAGE_BYTES: usize = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Options {
    endpoints: Vec<String>,
    tool: String,
    params: Vec<(String, String)>,
    warmup: usize,
    sequential: usize,
    concurrency: Vec<usize>,
    calls: usize,
    threads: usize,
    timeout: Option<Duration>,
    connect_wait: Duration,
    samples: bool,
    quiet: bool,
    serve: bool,
    engine_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoints: Vec::new(),
            tool: "ping".to_owned(),
            params: Vec::new(),
            warmup: 200,
            sequential: 2000,
            concurrency: vec![1, 4, 16, 32, 64],
            calls: 2000,
            threads: 1,
            timeout: None,
            connect_wait: Duration::from_secs(10),
            samples: false,
            quiet: false,
            serve: false,
            // Snakepit's default request timeout, as the NIF passes it to the engine.
            engine_timeout: Some(Duration::from_millis(300_000)),
        }
    }
}

const USAGE: &str =
    "usage: snakepit_bench_baseline --endpoints unix:/path.sock[,...] [--tool ping] \
[--param name=<json>]... [--warmup N] [--sequential N] [--concurrency 1,4,16] [--calls N] \
[--threads N] [--timeout-ms N (0 = none)] [--engine-timeout-ms N (engine tier; 0 = none, \
default 300000)] [--connect-wait-ms N] [--samples (raw sequential \
latencies in the output)] [--quiet (no progress on stderr)] [--serve (commands on stdin: \
`seq N`, `spawn N`, `engine N`, `level C N`; one JSON line each)]";

fn parse_args() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        if flag == "--samples" {
            o.samples = true;
            continue;
        }
        if flag == "--quiet" {
            o.quiet = true;
            continue;
        }
        if flag == "--serve" {
            o.serve = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "--endpoint" | "--endpoints" => o.endpoints.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "--tool" => o.tool = value,
            "--param" => {
                let (name, json) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--param expects name=<json>, got {value:?}"))?;
                o.params.push((name.to_owned(), json.to_owned()));
            }
            "--warmup" => o.warmup = num(&value)?,
            "--sequential" => o.sequential = num(&value)?,
            "--concurrency" => {
                o.concurrency = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(num)
                    .collect::<Result<_, _>>()?
            }
            "--calls" => o.calls = num(&value)?,
            "--threads" => o.threads = num(&value)?.max(1),
            "--timeout-ms" => {
                let ms = num(&value)?;
                o.timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
            }
            "--engine-timeout-ms" => {
                let ms = num(&value)?;
                o.engine_timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
            }
            "--connect-wait-ms" => o.connect_wait = Duration::from_millis(num(&value)? as u64),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if o.endpoints.is_empty() {
        return Err(format!("--endpoints is required\n{USAGE}"));
    }
    Ok(o)
}

/// Latency summary of one run.
struct Summary {
    calls: usize,
    errors: u64,
    wall: Duration,
    sorted_us: Vec<f64>,
}

impl Summary {
    fn new(mut samples_us: Vec<f64>, errors: u64, wall: Duration) -> Self {
        samples_us.sort_by(f64::total_cmp);
        Summary {
            calls: samples_us.len(),
            errors,
            wall,
            sorted_us: samples_us,
        }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.sorted_us.len() as f64).ceil() as usize;
        self.sorted_us[rank.clamp(1, self.sorted_us.len()) - 1]
    }

    fn to_json(&self, extra: &[(&str, String)]) -> String {
        let mean = if self.sorted_us.is_empty() {
            f64::NAN
        } else {
            self.sorted_us.iter().sum::<f64>() / self.sorted_us.len() as f64
        };
        let wall = self.wall.as_secs_f64();
        let mut fields: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        fields.extend([
            ("calls".to_owned(), self.calls.to_string()),
            ("errors".to_owned(), self.errors.to_string()),
            ("p50_us".to_owned(), num(self.pct(50.0))),
            ("p90_us".to_owned(), num(self.pct(90.0))),
            ("p99_us".to_owned(), num(self.pct(99.0))),
            ("mean_us".to_owned(), num(mean)),
            (
                "min_us".to_owned(),
                num(self.sorted_us.first().copied().unwrap_or(f64::NAN)),
            ),
            (
                "max_us".to_owned(),
                num(self.sorted_us.last().copied().unwrap_or(f64::NAN)),
            ),
            ("wall_s".to_owned(), num(wall)),
            (
                "throughput_per_s".to_owned(),
                num(if wall > 0.0 {
                    self.calls as f64 / wall
                } else {
                    f64::NAN
                }),
            ),
        ]);
        object(&fields)
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".to_owned()
    }
}

fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn object(fields: &[(String, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}: {}", string(k), v))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// The workers, each with capacity 1, behind a FIFO free list.
struct Pool {
    clients: Vec<BridgeServiceClient<Channel>>,
    free: Mutex<VecDeque<usize>>,
    permits: Semaphore,
    request: ExecuteToolRequest,
    timeout: Option<Duration>,
    seq: AtomicU64,
}

impl Pool {
    /// One call: check out a worker, run the RPC, check it in. Returns the latency in µs
    /// (including any wait for a free worker, as the pool's callers see it).
    async fn call(&self) -> Result<f64, String> {
        let started = Instant::now();
        let permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let worker = self
            .free
            .lock()
            .expect("free list")
            .pop_front()
            .expect("a permit guarantees a free worker");
        let mut client = self.clients[worker].clone();
        let mut request = self.request.clone();
        request.session_id = format!("baseline_worker_{worker}");
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        request
            .metadata
            .insert("correlation_id".to_owned(), format!("baseline-{n}"));
        let mut request = tonic::Request::new(request);
        if let Some(t) = self.timeout {
            request.set_timeout(t);
        }
        let result = client.execute_tool(request).await;
        self.free.lock().expect("free list").push_back(worker);
        drop(permit);
        let elapsed = started.elapsed().as_secs_f64() * 1e6;
        match result {
            Ok(response) => {
                let response = response.into_inner();
                if response.success {
                    Ok(elapsed)
                } else {
                    Err(format!("tool failed: {}", response.error_message))
                }
            }
            Err(status) => Err(format!("grpc {:?}: {}", status.code(), status.message())),
        }
    }
}

async fn connect(endpoint: &str, wait: Duration) -> Result<BridgeServiceClient<Channel>, String> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let deadline = Instant::now() + wait;
    loop {
        match ep.connect().await {
            Ok(channel) => {
                return Ok(BridgeServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot connect to {endpoint}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `total` calls spread over `callers` concurrent tasks (a shared counter hands out calls).
async fn run_level(pool: &Arc<Pool>, callers: usize, total: usize) -> Summary {
    let remaining = Arc::new(AtomicU64::new(total as u64));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let pool = pool.clone();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(total / callers + 1);
            let mut errors = 0u64;
            let mut first_error = None;
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                .is_ok()
            {
                match pool.call().await {
                    Ok(us) => samples.push(us),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }
    let mut samples = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        let (s, e, first) = task.await.expect("caller task");
        samples.extend(s);
        errors += e;
        if let Some(first) = first {
            eprintln!("baseline: error at concurrency {callers}: {first}");
        }
    }
    Summary::new(samples, errors, started.elapsed())
}

/// The "engine" tier: the same calls through `snakepit_core::engine::Engine` (scheduler, request
/// table, timers, reply hand-off) driven from a plain thread that blocks for the reply, the way a
/// BEAM scheduler thread submits through the NIF. Compared with the direct tonic calls it shows
/// what the core engine adds; compared with Snakepit it shows what the BEAM + NIF + Elixir add.
struct ChannelTarget(std::sync::mpsc::SyncSender<Outcome>);

impl ReplyTarget for ChannelTarget {
    fn reply(self, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }

    fn chunk(&mut self, _chunk: Chunk) -> bool {
        false
    }
}

struct NoEvents;

impl PoolEvents for NoEvents {
    fn recycle_worker(&self, _worker: &str) {}
}

fn engine_new(
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
) -> Result<Engine<ChannelTarget>, String> {
    let engine = Engine::new(
        EngineConfig::default(),
        Arc::new(NoEvents),
        rt.handle().clone(),
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        engine
            .add_worker(&format!("engine_worker_{i}"), endpoint, 1)
            .map_err(|e| format!("engine add_worker {endpoint}: {e}"))?;
    }
    Ok(engine)
}

/// `n` sequential calls through the engine from the current (non-tokio) thread; samples in µs.
fn engine_sequential(
    engine: &Engine<ChannelTarget>,
    request: &ExecuteToolRequest,
    timeout: Option<Duration>,
    n: usize,
) -> Summary {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut errors = 0;
    for i in 0..n {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut call = request.clone();
        call.metadata
            .insert("correlation_id".to_owned(), format!("engine-{i}"));
        let id = engine.reserve_id();
        let submitted = engine.submit(
            id,
            ChannelTarget(tx),
            SubmitRequest {
                call,
                timeout,
                ..SubmitRequest::default()
            },
        );
        let ok = submitted.is_ok() && matches!(rx.recv(), Ok(Outcome::Ok(_)));
        if ok {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            errors += 1;
        }
    }
    Summary::new(samples, errors, started.elapsed())
}

/// `n` sequential direct calls, each spawned onto the runtime from the current (non-tokio) thread,
/// which blocks for the result: the thread hand-off alone, without the engine.
fn spawn_sequential(rt: &tokio::runtime::Runtime, pool: &Arc<Pool>, n: usize) -> Summary {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let p = pool.clone();
        rt.spawn(async move {
            let _ = tx.send(p.call().await);
        });
        match rx.recv() {
            Ok(Ok(_)) => samples.push(t.elapsed().as_secs_f64() * 1e6),
            _ => errors += 1,
        }
    }
    Summary::new(samples, errors, started.elapsed())
}

async fn setup(o: &Options) -> Result<Arc<Pool>, String> {
    let mut clients = Vec::with_capacity(o.endpoints.len());
    for ep in &o.endpoints {
        clients.push(connect(ep, o.connect_wait).await?);
    }
    let mut parameters = HashMap::new();
    for (name, json) in &o.params {
        parameters.insert(
            name.clone(),
            Any {
                type_url: PARAM_TYPE_URL.to_owned(),
                value: json.clone().into_bytes(),
            },
        );
    }
    let request = ExecuteToolRequest {
        session_id: String::new(),
        tool_name: o.tool.clone(),
        parameters,
        metadata: HashMap::new(),
        stream: false,
        binary_parameters: HashMap::new(),
    };
    let workers = clients.len();
    let pool = Arc::new(Pool {
        clients,
        free: Mutex::new((0..workers).collect()),
        permits: Semaphore::new(workers),
        request,
        timeout: o.timeout,
        seq: AtomicU64::new(0),
    });

    // Warm-up: every worker's connection and Python code paths, and the tokio runtime.
    progress(
        o,
        format!("{workers} worker(s), warm-up {} calls", o.warmup),
    );
    for _ in 0..o.warmup {
        pool.call().await?;
    }
    Ok(pool)
}

fn progress(o: &Options, message: String) {
    if !o.quiet {
        eprintln!("baseline: {message}");
    }
}

async fn run(o: &Options, pool: &Arc<Pool>) -> String {
    let workers = pool.clients.len();
    let sequential = if o.sequential > 0 {
        progress(o, format!("sequential {} calls", o.sequential));
        Some(run_level(pool, 1, o.sequential).await)
    } else {
        None
    };

    let mut levels = Vec::new();
    for &c in &o.concurrency {
        let total = o.calls.max(c * 20);
        progress(o, format!("concurrency {c}, {total} calls"));
        // A short warm-up at this level so the first calls do not pay for new tasks/streams.
        let _ = run_level(pool, c, c.min(total)).await;
        levels.push(run_level(pool, c, total).await.to_json(&[
            ("concurrency", c.to_string()),
            ("workers", workers.to_string()),
        ]));
    }

    let fields = vec![
        ("tool".to_owned(), string(&o.tool)),
        ("workers".to_owned(), workers.to_string()),
        ("runtime_threads".to_owned(), o.threads.to_string()),
        ("warmup".to_owned(), o.warmup.to_string()),
        (
            "sequential".to_owned(),
            sequential
                .map(|s| summary_json(&s, workers, o.samples))
                .unwrap_or_else(|| "null".to_owned()),
        ),
        ("concurrency".to_owned(), format!("[{}]", levels.join(", "))),
    ];
    object(&fields)
}

fn summary_json(s: &Summary, workers: usize, samples: bool) -> String {
    let mut extra = vec![("workers", workers.to_string())];
    if samples {
        let raw: Vec<String> = s.sorted_us.iter().map(|&x| num(x)).collect();
        extra.push(("samples_us", format!("[{}]", raw.join(","))));
    }
    s.to_json(&extra)
}

/// `--serve`: after connecting and warming up, print `ready`, then answer one command per stdin
/// line with one JSON line on stdout, until EOF: `seq N` (N sequential calls, raw samples
/// included), `spawn N` (the same, each call spawned from this non-tokio thread, which blocks for
/// the result), `engine N` (N sequential calls through the core engine from this thread) or
/// `level C N` (N calls, C callers).
fn serve(rt: &tokio::runtime::Runtime, o: &Options, pool: &Arc<Pool>) -> Result<(), String> {
    let mut engine = None;
    use std::io::{BufRead, Write};
    let workers = pool.clients.len();
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock, line: String| -> Result<(), String> {
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| e.to_string())
    };
    say(&mut out, "ready".to_owned())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let parse = |w: &str| w.parse::<usize>().map_err(|_| format!("bad number {w:?}"));
        let reply = match words.as_slice() {
            ["seq", n] => {
                let summary = rt.block_on(run_level(pool, 1, parse(n)?.max(1)));
                summary_json(&summary, workers, true)
            }
            ["level", c, n] => {
                let c = parse(c)?.max(1);
                let summary = rt.block_on(run_level(pool, c, parse(n)?.max(c)));
                summary.to_json(&[
                    ("concurrency", c.to_string()),
                    ("workers", workers.to_string()),
                ])
            }
            ["engine", n] => {
                if engine.is_none() {
                    let e = engine_new(rt, &o.endpoints)?;
                    // Warm the engine's channels and tasks like the direct client was warmed.
                    engine_sequential(&e, &pool.request, o.engine_timeout, o.warmup.max(1));
                    engine = Some(e);
                }
                let e = engine.as_ref().expect("engine");
                let summary =
                    engine_sequential(e, &pool.request, o.engine_timeout, parse(n)?.max(1));
                summary_json(&summary, workers, true)
            }
            ["spawn", n] => {
                let summary = spawn_sequential(rt, pool, parse(n)?.max(1));
                summary_json(&summary, workers, true)
            }
            ["quit"] => break,
            [] => continue,
            _ => object(&[(
                "error".to_owned(),
                string(&format!("unknown command {line:?}")),
            )]),
        };
        say(&mut out, reply)?;
    }
    progress(o, "stdin closed, exiting".to_owned());
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Same runtime shape as the NIF's (one worker thread by default).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pool = match rt.block_on(setup(&o)) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("baseline: {e}");
            return ExitCode::FAILURE;
        }
    };
    if o.serve {
        return match serve(&rt, &o, &pool) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline: {e}");
                ExitCode::FAILURE
            }
        };
    }
    println!("{}", rt.block_on(run(&o, &pool)));
    ExitCode::SUCCESS
}
