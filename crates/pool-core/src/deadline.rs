//! [`deadline_after`]: a deadline that no timeout, however long, can overflow.

use std::time::Duration;

use tokio::time::Instant;

/// How far a deadline lies at most: further than anything waits.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `start + after`; a century after `start` when that sum cannot be represented, so that a
/// timeout too long to count down (`Duration::MAX`, `"500000000000years"` in a config) is as
/// good as none instead of a panic. For the backends and the gateway, whose waits need an
/// instant; the pool itself takes such moments as never coming.
///
/// ```
/// use std::time::Duration;
/// let now = tokio::time::Instant::now();
/// assert_eq!(pool_core::deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
/// assert!(pool_core::deadline_after(now, Duration::MAX) > now + Duration::from_secs(1 << 30));
/// ```
pub fn deadline_after(start: Instant, after: Duration) -> Instant {
    start.checked_add(after).unwrap_or_else(|| start + CENTURY)
}
