use cairn::{workflow, WorkflowError};

#[workflow]
async fn no_args() -> Result<u32, WorkflowError> {
    Ok(1)
}

#[workflow]
async fn ctx_not_first(n: u32) -> Result<u32, WorkflowError> {
    Ok(n)
}

fn main() {}
