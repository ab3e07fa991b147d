use cairn::{workflow, Ctx, WorkflowError};

pub struct NotSerde {
    pub id: u32,
}

#[workflow]
async fn takes_non_serde(ctx: Ctx, input: NotSerde) -> Result<u32, WorkflowError> {
    let _ = ctx;
    Ok(input.id)
}

#[workflow]
async fn returns_non_serde(ctx: Ctx, id: u32) -> Result<NotSerde, WorkflowError> {
    let _ = ctx;
    Ok(NotSerde { id })
}

fn main() {}
