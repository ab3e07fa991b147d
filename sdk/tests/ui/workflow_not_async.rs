use cairn::{workflow, Ctx, WorkflowError};

#[workflow]
fn not_async(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let _ = ctx;
    Ok(n)
}

fn main() {}
