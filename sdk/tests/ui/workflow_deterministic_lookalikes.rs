//! Code that only looks like a forbidden call compiles: a user module named `fs`, an
//! IP address value, a local named `rng`.
use cairn::{workflow, Ctx, WorkflowError};

mod fs {
    pub fn label(n: u32) -> String {
        format!("label-{n}")
    }
}

#[workflow]
async fn lookalikes(ctx: Ctx, n: u32) -> Result<String, WorkflowError> {
    let rng = n.wrapping_mul(31);
    let addr = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let now = ctx.now().await;
    let _ = (addr, now);
    Ok(crate::fs::label(rng))
}

fn main() {}
