//! Exports a worker's core counters to the `metrics` facade (Prometheus), as deltas once a
//! second, so the per-packet path only bumps plain integers.

use metrics::{counter, gauge};

use crate::turn::policy::Refusal;
use crate::turn::stats::{AuthFailure, Drop, QuotaHit, Stats};
use crate::turn::Transport;

/// Registers metric descriptions (once per process).
pub fn describe() {
    describe_sfu();
    metrics::describe_gauge!(
        "meridian_turn_allocations",
        "Active TURN allocations, per worker"
    );
    metrics::describe_gauge!(
        "meridian_turn_permissions",
        "Active permissions, per worker"
    );
    metrics::describe_gauge!(
        "meridian_turn_channels",
        "Active channel bindings, per worker"
    );
    metrics::describe_gauge!(
        "meridian_turn_stream_connections",
        "Open TCP/TLS client connections, per worker"
    );
    metrics::describe_gauge!(
        "meridian_worker_busy_ratio",
        "Share of wall time a worker thread was on a CPU (user + system), per second"
    );
    metrics::describe_counter!(
        "meridian_turn_packets_total",
        "Relayed packets by direction (to_peer, to_client)"
    );
    metrics::describe_counter!(
        "meridian_turn_bytes_total",
        "Relayed payload bytes by direction"
    );
    metrics::describe_counter!(
        "meridian_turn_channel_data_total",
        "Relayed packets that used ChannelData, by direction"
    );
    metrics::describe_counter!(
        "meridian_turn_requests_total",
        "STUN/TURN requests answered, by method and response code"
    );
    metrics::describe_counter!(
        "meridian_turn_auth_failures_total",
        "Authentication failures by reason"
    );
    metrics::describe_counter!(
        "meridian_turn_refused_peers_total",
        "Peer addresses refused by the relay policy, by reason"
    );
    metrics::describe_counter!(
        "meridian_turn_quota_hits_total",
        "Requests or packets refused by a quota"
    );
    metrics::describe_counter!(
        "meridian_turn_dropped_total",
        "Messages dropped without an answer, by reason"
    );
    metrics::describe_counter!(
        "meridian_turn_send_dropped_total",
        "Packets dropped because a socket or connection queue was full"
    );
    metrics::describe_counter!(
        "meridian_turn_idle_connections_closed_total",
        "TCP/TLS connections closed for holding no allocation too long"
    );
    metrics::describe_counter!(
        "meridian_turn_tls_handshake_failures_total",
        "Failed or timed-out TLS handshakes"
    );
    metrics::describe_gauge!(
        "meridian_ready",
        "1 when the node accepts new allocations, 0 while starting or draining"
    );
}

pub struct WorkerMetrics {
    worker: String,
    last: Stats,
}

impl WorkerMetrics {
    pub fn new(id: usize) -> Self {
        WorkerMetrics {
            worker: id.to_string(),
            last: Stats::default(),
        }
    }

    pub fn send_dropped(&mut self, transport: Transport) {
        counter!("meridian_turn_send_dropped_total", "transport" => transport.as_str())
            .increment(1);
    }

    pub fn send_dropped_n(&mut self, transport: Transport, n: usize) {
        counter!("meridian_turn_send_dropped_total", "transport" => transport.as_str())
            .increment(n as u64);
    }

    pub fn oversized_dropped(&mut self) {
        counter!("meridian_turn_dropped_total", "reason" => "oversized_peer_datagram").increment(1);
    }

    pub fn idle_connection_closed(&mut self) {
        counter!("meridian_turn_idle_connections_closed_total").increment(1);
    }

    pub fn tls_handshake_failed(&mut self) {
        counter!("meridian_turn_tls_handshake_failures_total").increment(1);
    }

    pub fn flush(
        &mut self,
        s: &Stats,
        (allocs, perms, chans): (usize, usize, usize),
        streams: usize,
        busy: f64,
    ) {
        let w = self.worker.clone();
        gauge!("meridian_turn_allocations", "worker" => w.clone()).set(allocs as f64);
        gauge!("meridian_turn_permissions", "worker" => w.clone()).set(perms as f64);
        gauge!("meridian_turn_channels", "worker" => w.clone()).set(chans as f64);
        gauge!("meridian_turn_stream_connections", "worker" => w.clone()).set(streams as f64);
        gauge!("meridian_worker_busy_ratio", "worker" => w).set(busy);
        let l = &self.last;
        counter!("meridian_turn_packets_total", "direction" => "to_peer")
            .increment(s.packets_to_peer - l.packets_to_peer);
        counter!("meridian_turn_packets_total", "direction" => "to_client")
            .increment(s.packets_to_client - l.packets_to_client);
        counter!("meridian_turn_bytes_total", "direction" => "to_peer")
            .increment(s.bytes_to_peer - l.bytes_to_peer);
        counter!("meridian_turn_bytes_total", "direction" => "to_client")
            .increment(s.bytes_to_client - l.bytes_to_client);
        counter!("meridian_turn_channel_data_total", "direction" => "to_peer")
            .increment(s.channel_data_to_peer - l.channel_data_to_peer);
        counter!("meridian_turn_channel_data_total", "direction" => "to_client")
            .increment(s.channel_data_to_client - l.channel_data_to_client);
        for ((method, code), n) in &s.requests {
            let before = l
                .requests
                .iter()
                .find(|(k, _)| k == &(*method, *code))
                .map_or(0, |(_, n)| *n);
            if *n > before {
                counter!("meridian_turn_requests_total", "method" => *method, "code" => code.to_string()).increment(n - before);
            }
        }
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let d = s.refused_peers[i] - l.refused_peers[i];
            if d > 0 {
                counter!("meridian_turn_refused_peers_total", "reason" => r.as_str()).increment(d);
            }
        }
        for (i, a) in AuthFailure::ALL.iter().enumerate() {
            let d = s.auth_failures[i] - l.auth_failures[i];
            if d > 0 {
                counter!("meridian_turn_auth_failures_total", "reason" => a.as_str()).increment(d);
            }
        }
        for (i, q) in QuotaHit::ALL.iter().enumerate() {
            let d = s.quota_hits[i] - l.quota_hits[i];
            if d > 0 {
                counter!("meridian_turn_quota_hits_total", "quota" => q.as_str()).increment(d);
            }
        }
        for (i, r) in Drop::ALL.iter().enumerate() {
            let d = s.dropped[i] - l.dropped[i];
            if d > 0 {
                counter!("meridian_turn_dropped_total", "reason" => r.as_str()).increment(d);
            }
        }
        self.last = s.clone();
    }
}

/// Rooms named in per-room metrics, per shard.
const MAX_ROOM_LABELS: usize = 32;

/// Exports one SFU shard's counters and gauges (once a second, as deltas).
#[derive(Default)]
pub struct SfuExport {
    last: crate::sfu::SfuStats,
    last_driver: ShardCounters,
}

/// Buckets of `meridian_sfu_forward_latency_seconds`: fine below the 2 ms an SFU may add.
pub const FORWARD_LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.02, 0.05, 0.1, 0.25,
];

/// What the shard driver itself counts.
#[derive(Default, Clone, Copy)]
pub struct ShardCounters {
    /// Datagrams no session on any shard claimed.
    pub unknown_source: u64,
    /// Datagrams the kernel delivered to another shard's socket, handed to the owner.
    pub misrouted: u64,
    /// Datagrams the kernel refused to send (socket buffer full, or an error).
    pub send_dropped: u64,
}

impl SfuExport {
    pub fn export(&mut self, shard: usize, sfu: &mut crate::sfu::Sfu, driver: ShardCounters) {
        counter!("meridian_sfu_dropped_total", "reason" => "unknown_source")
            .increment(driver.unknown_source - self.last_driver.unknown_source);
        counter!("meridian_sfu_dropped_total", "reason" => "send_buffer")
            .increment(driver.send_dropped - self.last_driver.send_dropped);
        counter!("meridian_sfu_misrouted_datagrams_total")
            .increment(driver.misrouted - self.last_driver.misrouted);
        self.last_driver = driver;
        let s = sfu.stats().clone();
        let l = &self.last;
        let shard_label = shard.to_string();
        let c = |name: &'static str, now: u64, before: u64| {
            counter!(name).increment(now.saturating_sub(before));
        };
        c("meridian_sfu_joins_total", s.joins, l.joins);
        c("meridian_sfu_leaves_total", s.leaves, l.leaves);
        c(
            "meridian_sfu_disconnects_total",
            s.disconnects,
            l.disconnects,
        );
        counter!("meridian_sfu_packets_total", "direction" => "in")
            .increment(s.packets_in - l.packets_in);
        counter!("meridian_sfu_packets_total", "direction" => "out")
            .increment(s.packets_out - l.packets_out);
        counter!("meridian_sfu_bytes_total", "direction" => "in")
            .increment(s.bytes_in - l.bytes_in);
        counter!("meridian_sfu_bytes_total", "direction" => "out")
            .increment(s.bytes_out - l.bytes_out);
        c("meridian_sfu_forwarded_rtp_total", s.forwarded, l.forwarded);
        counter!("meridian_sfu_keyframe_requests_total", "direction" => "from_subscribers")
            .increment(s.keyframe_requests_in - l.keyframe_requests_in);
        counter!("meridian_sfu_keyframe_requests_total", "direction" => "to_publishers")
            .increment(s.keyframe_requests_out - l.keyframe_requests_out);
        c(
            "meridian_sfu_layer_switches_total",
            s.layer_switches,
            l.layer_switches,
        );
        counter!("meridian_sfu_messages_total", "channel" => "controls")
            .increment(s.room_messages - l.room_messages);
        counter!("meridian_sfu_messages_total", "channel" => "input")
            .increment(s.input_messages - l.input_messages);
        c(
            "meridian_sfu_message_errors_total",
            s.message_errors,
            l.message_errors,
        );
        counter!("meridian_sfu_dropped_total", "reason" => "rtc_input_error")
            .increment(s.rtc_input_errors - l.rtc_input_errors);
        counter!("meridian_sfu_dropped_total", "reason" => "forbidden_media")
            .increment(s.forbidden_media - l.forbidden_media);
        counter!("meridian_sfu_dropped_total", "reason" => "codec_mismatch")
            .increment(s.codec_mismatch - l.codec_mismatch);
        c("meridian_sfu_publisher_stalls_total", s.stalls, l.stalls);
        c(
            "meridian_sfu_forwarded_direct_total",
            s.forwarded_direct,
            l.forwarded_direct,
        );
        c("meridian_sfu_nacked_packets_total", s.nacked, l.nacked);
        c(
            "meridian_sfu_webrtc_failures_total",
            s.webrtc_failures,
            l.webrtc_failures,
        );
        c(
            "meridian_sfu_session_wakes_total",
            s.session_wakes,
            l.session_wakes,
        );
        counter!("meridian_sfu_retransmissions_total", "result" => "sent")
            .increment(s.retransmitted - l.retransmitted);
        counter!("meridian_sfu_retransmissions_total", "result" => "not_cached")
            .increment(s.nack_misses - l.nack_misses);
        counter!("meridian_sfu_dropped_total", "reason" => "srtp")
            .increment(s.srtp_errors - l.srtp_errors);
        c(
            "meridian_sfu_trunk_packets_in_total",
            s.trunk_packets_in,
            l.trunk_packets_in,
        );
        counter!("meridian_sfu_dropped_total", "reason" => "trunk_bad_packet")
            .increment(s.trunk_bad_packets - l.trunk_bad_packets);
        counter!("meridian_sfu_trunk_retransmissions_total", "result" => "sent")
            .increment(s.trunk_resent - l.trunk_resent);
        counter!("meridian_sfu_trunk_retransmissions_total", "result" => "not_cached")
            .increment(s.trunk_resend_misses - l.trunk_resend_misses);
        self.last = s;
        let (publishers, subscriptions) = sfu.publisher_subscriber_counts();
        gauge!("meridian_sfu_sessions", "shard" => shard_label.clone())
            .set(sfu.session_count() as f64);
        gauge!("meridian_sfu_publishers", "shard" => shard_label.clone()).set(publishers as f64);
        gauge!("meridian_sfu_subscriptions", "shard" => shard_label.clone())
            .set(subscriptions as f64);
        gauge!("meridian_sfu_tracks", "shard" => shard_label).set(sfu.track_count() as f64);
        // Bitrate per room: the busiest rooms by name, the rest summed under "_other", so the
        // label set stays bounded however many rooms there are.
        let mut rooms: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut stalled = 0u64;
        for (room, _track, _kind, bps, is_stalled) in sfu.track_rates() {
            *rooms.entry(room).or_default() += bps;
            stalled += is_stalled as u64;
        }
        let mut by_rate: Vec<(String, u64)> = rooms.into_iter().collect();
        by_rate.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other: u64 = by_rate.iter().skip(MAX_ROOM_LABELS).map(|r| r.1).sum();
        for (room, bps) in by_rate.into_iter().take(MAX_ROOM_LABELS) {
            gauge!("meridian_sfu_room_bitrate_bps", "room" => room).set(bps as f64);
        }
        gauge!("meridian_sfu_room_bitrate_bps", "room" => "_other").set(other as f64);
        gauge!("meridian_sfu_stalled_tracks", "shard" => shard.to_string()).set(stalled as f64);
        for d in sfu.take_first_media_latencies() {
            metrics::histogram!("meridian_sfu_join_to_first_media_seconds").record(d.as_secs_f64());
        }
    }
}

fn describe_sfu() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("meridian_sfu_sessions", "WebRTC sessions, per SFU shard");
    describe_gauge!(
        "meridian_sfu_publishers",
        "Sessions publishing at least one track, per SFU shard"
    );
    describe_gauge!(
        "meridian_sfu_subscriptions",
        "Forwarded track subscriptions, per SFU shard"
    );
    describe_gauge!("meridian_sfu_tracks", "Published tracks, per SFU shard");
    describe_gauge!(
        "meridian_sfu_stalled_tracks",
        "Published tracks that carried no media for sfu.stall_after_secs (alert on > 0: a device stopped sending)"
    );
    describe_gauge!(
        "meridian_sfu_room_bitrate_bps",
        "Media bitrate published into a room (the busiest rooms by name, the rest as room=\"_other\")"
    );
    describe_counter!(
        "meridian_sfu_trunk_packets_in_total",
        "Media packets of remote tracks (homed on other nodes) taken from the trunk"
    );
    describe_counter!(
        "meridian_sfu_trunk_retransmissions_total",
        "Packets resent to the trunk for other nodes' NACKs (sent, not_cached)"
    );
    describe_counter!(
        "meridian_trunk_datagrams_total",
        "Trunk media datagrams by peer node and direction (tx, rx)"
    );
    describe_counter!(
        "meridian_trunk_bytes_total",
        "Trunk UDP bytes by peer node and direction (tx, rx)"
    );
    describe_gauge!(
        "meridian_trunk_rtt_seconds",
        "Smoothed RTT of the trunk to a peer node"
    );
    describe_gauge!("meridian_trunk_connections", "Trunk connections up");
    describe_counter!(
        "meridian_trunk_refused_total",
        "Trunk peers refused (reason: certificate, handshake, not_allowed, hello, identity, timeout)"
    );
    describe_counter!(
        "meridian_trunk_lost_packets_total",
        "QUIC packets the trunk to a peer node lost"
    );
    describe_counter!(
        "meridian_trunk_datagrams_dropped_total",
        "Trunk media datagrams not sent or not delivered (not_up, too_large, events_full)"
    );
    describe_gauge!(
        "meridian_trunk_subscriptions",
        "Open remote subscriptions per trunk: side=import (tracks this node receives from the peer), side=export (tracks the peer receives from this node)"
    );
    describe_gauge!(
        "meridian_trunk_edge_rooms",
        "Rooms homed on other nodes served here"
    );
    describe_gauge!(
        "meridian_trunk_pending_messages",
        "Room messages sent to their home and not acknowledged yet"
    );
    describe_counter!("meridian_sfu_joins_total", "Sessions that joined");
    describe_counter!("meridian_sfu_leaves_total", "Sessions that ended");
    describe_counter!(
        "meridian_sfu_disconnects_total",
        "Sessions the SFU ended (ICE timeout, WebRTC failure)"
    );
    describe_counter!(
        "meridian_sfu_packets_total",
        "SFU datagrams by direction (in, out)"
    );
    describe_counter!(
        "meridian_sfu_bytes_total",
        "SFU datagram bytes by direction"
    );
    describe_counter!(
        "meridian_sfu_forwarded_rtp_total",
        "RTP packets forwarded to subscribers"
    );
    describe_counter!(
        "meridian_sfu_keyframe_requests_total",
        "PLI/FIR from subscribers, and keyframe requests sent to publishers after aggregation"
    );
    describe_counter!(
        "meridian_sfu_layer_switches_total",
        "Simulcast layer switches"
    );
    describe_counter!(
        "meridian_sfu_forwarded_direct_total",
        "RTP packets forwarded on the SFU's own SRTP send path (players' and viewers' non-simulcast media; part of meridian_sfu_forwarded_rtp_total)"
    );
    describe_counter!(
        "meridian_sfu_session_wakes_total",
        "WebRTC sessions woken by their own timers (a cost per session, independent of media)"
    );
    describe_counter!(
        "meridian_sfu_webrtc_failures_total",
        "Sessions ended by a WebRTC error (DTLS handshake, certificate not matching the SDP fingerprint, ...) and DTLS errors on input; each logged at info with its reason"
    );
    describe_counter!(
        "meridian_sfu_nacked_packets_total",
        "Lost packets subscribers reported in NACKs (own send path)"
    );
    describe_counter!(
        "meridian_sfu_retransmissions_total",
        "NACKed packets resent from the track's packet cache (result=sent), or no longer cached (result=not_cached)"
    );
    describe_counter!(
        "meridian_sfu_messages_total",
        "Data-channel room messages by channel (controls, input)"
    );
    describe_counter!(
        "meridian_sfu_message_errors_total",
        "Data-channel messages refused (malformed, too large, forbidden)"
    );
    describe_counter!(
        "meridian_sfu_dropped_total",
        "SFU datagrams or packets dropped, by reason"
    );
    describe_counter!(
        "meridian_sfu_misrouted_datagrams_total",
        "Datagrams the kernel delivered to another shard's socket, passed to the owning shard"
    );
    describe_counter!(
        "meridian_sfu_publisher_stalls_total",
        "Times a published track stalled"
    );
    describe_counter!(
        "meridian_sfu_turn_handoff_total",
        "Datagrams between this node's TURN relays and its SFU handed over in process, by direction"
    );
    describe_histogram!(
        "meridian_sfu_forward_latency_seconds",
        "From a shard taking a datagram to the flush of what it forwarded, per forwarded packet (packets a pacer holds back are not included)"
    );
    describe_histogram!(
        "meridian_sfu_join_to_first_media_seconds",
        "From a session's join to the first video packet the SFU sent it"
    );
    describe_histogram!(
        "meridian_signaling_join_seconds",
        "From a WebSocket join to the session's media being connected"
    );
    describe_counter!(
        "meridian_signaling_errors_total",
        "Signaling errors and refusals by code"
    );
}
