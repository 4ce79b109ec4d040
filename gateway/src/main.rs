//! The `tandem` command line.

fn main() -> anyhow::Result<()> {
    Ok(())
}
