//! `client-sim plan`: how many boxes a surge needs, from a measured report:
//! memory per connection (Surge's, measured, plus the kernel's socket) and
//! CPU per delivery, with the arithmetic printed so it can be checked.

use crate::report::Report;

/// Kernel memory per idle TCP socket: kernel-tuning's measured figure
/// (docs/kernel-tuning.md), the one the sysctl plans are sized with too.
pub const KERNEL_BYTES_PER_SOCKET: f64 = kernel_tuning::plan::DEFAULT_MEM_PER_CONN as f64;

#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Concurrent users to plan for.
    #[arg(long)]
    pub users: u64,
    /// A client-sim JSON report (fanout with --server-pid gives both figures).
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// Memory per box, e.g. 64GiB.
    #[arg(long, default_value = "64GiB")]
    pub box_mem: String,
    /// Cores per box.
    #[arg(long, default_value_t = 16)]
    pub box_cores: u32,
    /// Slot updates each user receives per minute at the peak of the surge.
    #[arg(long, default_value_t = 6.0)]
    pub updates_per_user_per_min: f64,
    /// Share of a box's memory and CPU to plan on using.
    #[arg(long, default_value_t = 0.7)]
    pub headroom: f64,
    /// Kernel bytes per socket (see kernel-tuning measure).
    #[arg(long, default_value_t = KERNEL_BYTES_PER_SOCKET)]
    pub kernel_bytes: f64,
}

/// Parses "64GiB", "512MiB", "1.5TiB" or plain bytes.
pub fn parse_size(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..split]
        .parse()
        .map_err(|_| format!("'{s}' is not a size"))?;
    let f = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" | "kb" => 1024.0,
        "m" | "mib" | "mb" => 1024.0 * 1024.0,
        "g" | "gib" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" | "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}'")),
    };
    Ok(n * f)
}

/// The plan as text, and the number of boxes.
pub fn plan(args: &PlanArgs, report: &Report) -> Result<(String, u64), String> {
    let server = report
        .server
        .as_ref()
        .ok_or("the report has no server figures: run with --server-pid")?;
    let user_bytes = server.bytes_per_connection;
    let per_conn = user_bytes + args.kernel_bytes;
    let box_mem = parse_size(&args.box_mem)?;
    let users = args.users as f64;
    let mut out = String::new();
    let gib = |b: f64| b / (1024.0 * 1024.0 * 1024.0);
    out.push_str(&format!(
        "memory per connection: {user_bytes:.0} B (Surge, measured) + {:.0} B (kernel socket) = {per_conn:.0} B\n",
        args.kernel_bytes
    ));
    let need_mem = users * per_conn;
    let usable_mem = box_mem * args.headroom;
    let mem_boxes = (need_mem / usable_mem).ceil().max(1.0) as u64;
    out.push_str(&format!(
        "memory for {} users: {} x {per_conn:.0} B = {:.2} GiB; usable per box {:.1} GiB x {} = {:.2} GiB -> {mem_boxes} box(es)\n",
        args.users,
        args.users,
        gib(need_mem),
        gib(box_mem),
        args.headroom,
        gib(usable_mem)
    ));
    let rate = users * args.updates_per_user_per_min / 60.0;
    let cpu_boxes = match report.server_cpu_us_per_delivery {
        Some(us) => {
            let cores = rate * us / 1e6;
            let usable = f64::from(args.box_cores) * args.headroom;
            let boxes = (cores / usable).ceil().max(1.0) as u64;
            out.push_str(&format!(
                "deliveries at the peak: {} users x {} updates/min / 60 = {rate:.0}/s; x {us:.2} us CPU each = {cores:.2} cores; usable per box {} x {} = {usable:.1} cores -> {boxes} box(es)\n",
                args.users, args.updates_per_user_per_min, args.box_cores, args.headroom
            ));
            boxes
        }
        None => {
            out.push_str("CPU: the report has no CPU per delivery (run fanout with --server-pid); planning on memory only\n");
            1
        }
    };
    let boxes = mem_boxes.max(cpu_boxes);
    out.push_str(&format!(
        "boxes: max({mem_boxes}, {cpu_boxes}) = {boxes}; with one spare for failover: {}\n",
        boxes + 1
    ));
    Ok((out, boxes))
}
