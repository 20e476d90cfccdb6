//! Redraws `frontier.png` / `frontier.svg` of an export from its `calibration.yaml`, without
//! calibrating again (after a change to the plot, or to see the int8 markers of an older
//! report): `cargo run -p oats-calibrate --example replot -- <export dir>`.
use std::path::PathBuf;

use oats_calibrate::{plot, report, CalibrationReport};

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: replot <export dir>"))?,
    );
    let r = CalibrationReport::load(&dir.join(report::REPORT_FILE))?;
    plot::Frontier::of_calibration(&r, &[]).write(&dir)?;
    println!("wrote {}/frontier.png and frontier.svg", dir.display());
    Ok(())
}
