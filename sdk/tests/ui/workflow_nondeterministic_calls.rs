use cairn::{workflow, Ctx, WorkflowError};

#[workflow]
async fn clocks_and_randomness(ctx: Ctx) -> Result<u64, WorkflowError> {
    let _ = ctx;
    let started = std::time::SystemTime::now();
    let tick = std::time::Instant::now();
    let roll: u64 = rand::random();
    let id = uuid::Uuid::new_v4();
    let _ = (started, tick, id);
    Ok(roll)
}

#[workflow]
async fn tasks_and_sleeps(ctx: Ctx) -> Result<(), WorkflowError> {
    let _ = ctx;
    tokio::spawn(async {});
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::thread::sleep(std::time::Duration::from_secs(1));
    tokio::task::yield_now().await;
    Ok(())
}

#[workflow]
async fn direct_io(ctx: Ctx) -> Result<usize, WorkflowError> {
    let _ = ctx;
    let config = std::fs::read_to_string("config.toml").unwrap_or_default();
    let stream = std::net::TcpStream::connect("127.0.0.1:80");
    let home = std::env::var("HOME");
    let _ = (stream, home);
    Ok(config.len())
}

fn main() {}

#[workflow]
async fn hidden_in_macros_and_imports(ctx: Ctx) -> Result<String, WorkflowError> {
    let _ = ctx;
    use std::thread::sleep;
    let line = format!("{:?}", std::time::SystemTime::now());
    let (a, b) = futures::join!(async { 1 }, async { tokio::spawn(async {}) });
    let _ = (a, b, sleep);
    Ok(line)
}
