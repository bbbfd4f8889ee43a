//! Traffic profiles: the intended request rate over time. The generator follows it whatever
//! the engine's latency (open model), so a slow engine cannot slow the offered load down.

use clap::ValueEnum;
use std::time::Duration;

/// The shape of the offered load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// The base rate throughout.
    Steady,
    /// From 10% of the base rate up to all of it.
    Ramp,
    /// The base rate, 10x from 30% to 60% of the run, then the base rate again.
    Spike,
    /// A live-stream flash sale: the base rate, 10x from 20% of the run, then decaying back.
    FlashSale,
}

/// Orders a minute per channel at the flash-sale baseline (the rate an ERP choked at).
pub const FLASH_SALE_ORDERS_PER_MINUTE: f64 = 43.0;
/// How much higher the spike is.
pub const SPIKE_FACTOR: f64 = 10.0;

/// A profile with its base rate (requests per second) and duration.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The profile.
    pub profile: Profile,
    /// Base request rate, per second.
    pub base_rate: f64,
    /// Length of the run.
    pub duration: Duration,
}

impl Shape {
    /// Intended requests per second at `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        let d = self.duration.as_secs_f64().max(f64::EPSILON);
        let x = (t / d).clamp(0.0, 1.0);
        let base = self.base_rate;
        match self.profile {
            Profile::Steady => base,
            Profile::Ramp => base * (0.1 + 0.9 * x),
            Profile::Spike if (0.3..0.6).contains(&x) => base * SPIKE_FACTOR,
            Profile::Spike => base,
            Profile::FlashSale if x < 0.2 => base,
            Profile::FlashSale if x < 0.5 => base * SPIKE_FACTOR,
            Profile::FlashSale => base * (1.0 + (SPIKE_FACTOR - 1.0) * (-(x - 0.5) / 0.1).exp()),
        }
    }

    /// Requests the profile intends over the whole run (numerically integrated).
    pub fn intended_total(&self) -> f64 {
        let steps = 1000;
        let dt = self.duration.as_secs_f64() / steps as f64;
        (0..steps)
            .map(|i| self.rate_at((i as f64 + 0.5) * dt) * dt)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(profile: Profile) -> Shape {
        Shape {
            profile,
            base_rate: 100.0,
            duration: Duration::from_secs(100),
        }
    }

    #[test]
    fn profiles_have_their_shapes() {
        assert_eq!(shape(Profile::Steady).rate_at(50.0), 100.0);
        assert!((shape(Profile::Ramp).rate_at(0.0) - 10.0).abs() < 1e-9);
        assert!((shape(Profile::Ramp).rate_at(100.0) - 100.0).abs() < 1e-9);
        assert_eq!(shape(Profile::Spike).rate_at(45.0), 1000.0);
        assert_eq!(shape(Profile::Spike).rate_at(70.0), 100.0);
        let flash = shape(Profile::FlashSale);
        assert_eq!(flash.rate_at(10.0), 100.0);
        assert_eq!(flash.rate_at(30.0), 1000.0);
        assert!(
            flash.rate_at(60.0) < 500.0 && flash.rate_at(60.0) > 100.0,
            "decaying"
        );
        assert!((shape(Profile::Steady).intended_total() - 10_000.0).abs() < 1.0);
    }
}
