//! Device choice. `cuda` never falls back to CPU silently.
use tch::Device;

use crate::config::DeviceChoice;
use crate::error::{Result, TrainError};

pub fn resolve(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(TrainError::Device(
                    "--device cuda was asked for, but libtorch sees no CUDA device. Either this machine has no \
                     GPU/driver, or the binary was built against the CPU-only libtorch of scripts/setup.sh or without \
                     `--features cuda` (see README, 'Training on a GPU'). Use --device cpu or auto to run on the CPU."
                        .into(),
                ))
            }
        }
    }
}
