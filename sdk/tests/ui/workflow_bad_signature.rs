use cairn::{workflow, Ctx, WorkflowError};

#[workflow]
async fn not_result(ctx: Ctx, n: u32) -> u32 {
    let _ = ctx;
    n
}

#[workflow]
async fn generic<T>(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let _ = ctx;
    Ok(n)
}

#[workflow]
async fn borrowed(ctx: Ctx, name: &str) -> Result<u32, WorkflowError> {
    let _ = ctx;
    Ok(name.len() as u32)
}

#[workflow(nme = "typo")]
async fn bad_option(ctx: Ctx) -> Result<u32, WorkflowError> {
    let _ = ctx;
    Ok(1)
}

fn main() {}
