//! wip
pub async fn run(_c: &crate::cli::ConnArgs, _a: &crate::cli::DemoArgs) -> u8 {
    2
}
