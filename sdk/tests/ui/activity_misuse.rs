use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, WorkflowError};

#[activity]
async fn no_ctx(n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

#[activity]
async fn workflow_ctx(ctx: Ctx, n: u32) -> Result<u32, ActivityError> {
    let _ = ctx;
    Ok(n)
}

#[activity]
async fn double(ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    let _ = ctx;
    Ok(n * 2)
}

#[workflow]
async fn wrong_input_type(ctx: Ctx) -> Result<u32, WorkflowError> {
    let n = ctx.activity(double, "two").await?;
    Ok(n)
}

#[activity(start_to_close = "soon")]
async fn vague(ctx: ActivityCtx) -> Result<(), ActivityError> {
    let _ = ctx;
    Ok(())
}

#[activity(max_attempts = 0)]
async fn never(ctx: ActivityCtx) -> Result<(), ActivityError> {
    let _ = ctx;
    Ok(())
}

#[workflow(max_attempts = 3)]
async fn retried_workflow(ctx: Ctx) -> Result<(), WorkflowError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
