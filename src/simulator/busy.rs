//! Determinism and background load: the seeded PRNG every "random" id and token comes
//! from, and the busy-office mode that books, moves and cancels meetings in some rooms at
//! a given rate so a running `rooms-sync serve` has something to follow.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::{Control, Meeting};

/// SplitMix64: tiny, fast and good enough for simulation. Determinism, not secrecy, is
/// the point, so no cryptographic generator is needed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`0` when `n` is 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// `n` random bytes as lower-case hex.
    pub fn hex(&mut self, bytes: usize) -> String {
        let mut out = String::with_capacity(bytes * 2);
        while out.len() < bytes * 2 {
            out.push_str(&format!("{:016x}", self.next_u64()));
        }
        out.truncate(bytes * 2);
        out
    }

    /// A version-4 shaped GUID.
    pub fn guid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// Starts the busy-office generator: about `per_minute` changes a minute (real time,
/// not scaled) spread over `rooms`: mostly bookings, then moves, cancellations and deletions
/// of meetings it booked itself.
pub fn spawn_busy_office(
    control: Control,
    rooms: Vec<String>,
    per_minute: f64,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs_f64(60.0 / per_minute.max(0.001));
    tokio::spawn(async move {
        let mut booked = Vec::new();
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let _ = busy_step(&control, &rooms, &mut booked);
        }
    })
}

/// What one busy-office step did to which meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyChange {
    pub room: String,
    pub item_id: String,
    /// `booked`, `moved`, `cancelled` or `deleted`.
    pub action: &'static str,
    pub subject: String,
}

/// A meeting the busy office booked: room, item id, subject.
pub(crate) type Booked = (String, String, String);

/// One random change; `None` when it could not be applied (an item deleted meanwhile by the
/// control API), which is skipped.
pub(crate) fn busy_step(
    control: &Control,
    rooms: &[String],
    booked: &mut Vec<Booked>,
) -> Option<BusyChange> {
    if rooms.is_empty() {
        return None;
    }
    let (dice, room_pick, slot, len) = control.random4();
    let action = if booked.is_empty() { 0 } else { dice % 10 };
    let hour = TimeDelta::hours(1);
    let base = Utc::now()
        .duration_trunc(hour)
        .unwrap_or_else(|_| Utc::now());
    let start = base + TimeDelta::hours(i64::try_from(slot % (24 * 14)).unwrap_or(0) + 1);
    let end = start + TimeDelta::minutes(30 * (i64::try_from(len % 4).unwrap_or(0) + 1));
    let pick = usize::try_from(room_pick).unwrap_or(0);
    let subject = format!("Busy meeting {}", slot % 10_000);
    let change = |room: &str, id: &str, subject: &str, action| BusyChange {
        room: room.to_owned(),
        item_id: id.to_owned(),
        action,
        subject: subject.to_owned(),
    };
    match action {
        0..=4 => {
            let room = rooms.get(pick % rooms.len())?;
            let meeting = Meeting {
                subject: subject.clone(),
                organizer: format!("user{}@sim.example", len % 50),
                start,
                end,
                is_all_day: false,
                location: room.clone(),
            };
            let id = control.create_meeting(room, meeting).ok()?;
            booked.push((room.clone(), id.clone(), subject.clone()));
            Some(change(room, &id, &subject, "booked"))
        }
        5..=7 => {
            let (room, id, subject) = booked.get(pick % booked.len())?;
            control.move_meeting(room, id, start, end).ok()?;
            Some(change(room, id, subject, "moved"))
        }
        8 => {
            let (room, id, subject) = booked.get(pick % booked.len())?;
            control.cancel_meeting(room, id).ok()?;
            Some(change(room, id, subject, "cancelled"))
        }
        _ => {
            let i = pick % booked.len();
            let (room, id, subject) = booked.swap_remove(i);
            control.delete_meeting(&room, &id).ok()?;
            Some(change(&room, &id, &subject, "deleted"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        assert_eq!(a.hex(20), b.hex(20));
        assert_eq!(a.guid(), b.guid());
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    fn guids_are_formatted_like_graph_subscription_ids() {
        let g = SplitMix64::new(7).guid();
        assert_eq!(g.len(), 36);
        assert_eq!(g.matches('-').count(), 4);
    }
}
