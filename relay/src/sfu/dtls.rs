//! DTLS for the SFU on AWS-LC's libssl, plugged into str0m through its crypto provider.
//!
//! str0m's own DTLS (dimpl) takes only ECDSA certificates: as a server it asks for an ECDSA
//! client certificate and aborts the handshake when the peer has an RSA one, which is what
//! OpenSSL-based endpoints such as GStreamer's webrtcbin present. AWS-LC's libssl (the same
//! library as the node's other crypto, through `aws-lc-sys`) accepts RSA and ECDSA peers alike.
//! Our own certificate stays the shard's ECDSA P-256 one.
//!
//! The connection is driven sans-IO like the rest of str0m: a custom BIO hands each datagram
//! AWS-LC writes to [`DtlsInstance::poll_output`] and feeds it the datagrams str0m receives, and
//! AWS-LC's clock (retransmission timers) is the `now` str0m passes in, not the wall clock.
//!
//! The peer's certificate is accepted during the handshake whatever it is: str0m compares its
//! fingerprint with the one from the SDP when we report it ([`DtlsOutput::PeerCert`]), before
//! any keying material is used.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CStr};
use std::fmt;
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_sys as ffi;
use dimpl::{CertificateError, CryptoOperation, SecurityError, TimeoutError};
use str0m::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};
use str0m::crypto::dtls::{DtlsVersion, KeyingMaterial, ProtocolVersion, SrtpProfile};
use str0m::crypto::{CryptoError, CryptoProvider};

/// str0m's crypto provider for the SFU: its default one (AWS-LC through aws-lc-rs) for SRTP,
/// hashes and certificate generation, with DTLS from AWS-LC's libssl.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            static DTLS: AwsLcDtls = AwsLcDtls {
                srtp_profiles: None,
            };
            let mut provider = str0m::crypto::from_feature_flags();
            provider.dtls_provider = &DTLS;
            Arc::new(provider)
        })
        .clone()
}

/// Suites for both roles. As a server only the ECDSA ones can be picked (our certificate is
/// ECDSA); as a client the server's certificate decides. CBC suites last, for old peers.
const CIPHERS: &CStr = c"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:\
ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA";
const GROUPS: &CStr = c"X25519:P-256:P-384";
/// Preference order (a server picks its first one the client offers), as str0m's own DTLS.
const SRTP_PROFILES: &CStr = c"SRTP_AEAD_AES_256_GCM:SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";
const SRTP_LABEL: &[u8] = b"EXTRACTOR-dtls_srtp";
const DEFAULT_MTU: usize = 1150;
const MIN_MTU: usize = 256;
/// Datagrams AWS-LC may queue before they are polled (a handshake flight is a handful).
const MAX_QUEUED: usize = 256;
/// Largest DTLS plaintext record.
const MAX_PLAINTEXT: usize = 16_384;
/// How stale our idea of `now` may get while a handshake runs. str0m gives the time only with
/// `handle_timeout`, and AWS-LC starts a flight's retransmission timer when a datagram arrives
/// (`handle_packet`, no time); so until the handshake is done we ask to be woken this often.
const HANDSHAKE_TICK: Duration = Duration::from_millis(250);
/// "No timer": far enough to never fire.
const IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A provider whose connections offer only `profiles` (OpenSSL list syntax), for tests that
/// need a peer to settle on a given SRTP profile.
#[cfg(test)]
pub fn crypto_provider_with_srtp_profiles(profiles: &'static CStr) -> Arc<CryptoProvider> {
    let dtls: &'static AwsLcDtls = Box::leak(Box::new(AwsLcDtls {
        srtp_profiles: Some(profiles),
    }));
    let mut provider = str0m::crypto::from_feature_flags();
    provider.dtls_provider = dtls;
    Arc::new(provider)
}

/// SRTP keys of the handshake that just completed on this thread, with our DTLS role.
#[derive(Debug)]
pub struct Exported {
    pub material: Vec<u8>,
    pub profile: SrtpProfile,
    pub we_are_client: bool,
}

thread_local! {
    static EXPORTED: std::cell::RefCell<Option<Exported>> = const { std::cell::RefCell::new(None) };
}

/// Forgets keys no one took (another connection's, on this thread).
pub fn clear_exported() {
    EXPORTED.with(|e| e.borrow_mut().take());
}

/// The keys of a handshake completed since [`clear_exported`]. The SFU brackets each call into
/// one session's `Rtc` with the two, so the keys it takes are that session's: str0m keeps them
/// to itself, and the SFU's own send path needs them too.
pub fn take_exported() -> Option<Exported> {
    EXPORTED.with(|e| e.borrow_mut().take())
}

#[derive(Debug)]
struct AwsLcDtls {
    srtp_profiles: Option<&'static CStr>,
}

impl DtlsProvider for AwsLcDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // ECDSA P-256 (rcgen on aws-lc-rs), what browsers expect.
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        match dtls_version {
            // AWS-LC speaks DTLS 1.2; a client offering 1.3 as well settles on it.
            DtlsVersion::Dtls12 | DtlsVersion::Auto => {}
            other => return Err(CryptoError::Other(format!("{other} is not supported"))),
        }
        let ctx = context(cert).map_err(CryptoError::Other)?;
        let mtu = mtu.unwrap_or(DEFAULT_MTU);
        let instance = Instance::new(ctx, now, mtu).map_err(CryptoError::Other)?;
        if let Some(profiles) = self.srtp_profiles {
            // SAFETY: the SSL object is live; the list is a 'static C string.
            let ok = unsafe { ffi::SSL_set_srtp_profiles(instance.ssl, profiles.as_ptr()) };
            if ok != 1 {
                return Err(CryptoError::Other(ssl_error("SRTP profiles")));
            }
        }
        Ok(Box::new(instance))
    }
}

// ---------------------------------------------------------------------------------------------
// SSL_CTX: one per certificate, shared by that certificate's connections.

struct Ctx(*mut ffi::SSL_CTX);

// SAFETY: an SSL_CTX is fully configured in `new_context` before it is shared and never
// changed afterwards; AWS-LC allows a configured SSL_CTX to be used (SSL_new, reference
// counting) from several threads at once.
unsafe impl Send for Ctx {}
// SAFETY: as for Send.
unsafe impl Sync for Ctx {}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: we own one reference to a valid SSL_CTX; SSL objects made from it hold their
        // own reference.
        unsafe { ffi::SSL_CTX_free(self.0) }
    }
}

/// The context for `cert`. The SFU uses one certificate per shard, so a few cached contexts
/// make a join cost no certificate parsing.
fn context(cert: &DtlsCert) -> Result<Arc<Ctx>, String> {
    type Cache = Vec<(Vec<u8>, Vec<u8>, Arc<Ctx>)>;
    static CACHE: Mutex<Cache> = Mutex::new(Vec::new());
    const CACHED: usize = 16;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = cache
        .iter()
        .position(|(c, k, _)| *c == cert.certificate && *k == cert.private_key)
    {
        return Ok(cache[i].2.clone());
    }
    let ctx = Arc::new(new_context(cert)?);
    if cache.len() >= CACHED {
        cache.remove(0);
    }
    cache.push((
        cert.certificate.clone(),
        cert.private_key.clone(),
        ctx.clone(),
    ));
    Ok(ctx)
}

fn new_context(cert: &DtlsCert) -> Result<Ctx, String> {
    // SAFETY: plain AWS-LC calls on objects created here; every pointer passed is valid for the
    // call (the DER slices outlive it, the C strings are 'static). `Ctx` frees the context on
    // every error return; the X509 and EVP_PKEY are freed after SSL_CTX took its references.
    unsafe {
        ffi::ERR_clear_error();
        let ctx = ffi::SSL_CTX_new(ffi::DTLS_method());
        if ctx.is_null() {
            return Err(ssl_error("SSL_CTX_new"));
        }
        let ctx = Ctx(ctx);
        let c = ctx.0;
        let v = ffi::DTLS1_2_VERSION as u16;
        check(ffi::SSL_CTX_set_min_proto_version(c, v), "min version")?;
        check(ffi::SSL_CTX_set_max_proto_version(c, v), "max version")?;
        // No resumption (WebRTC never resumes) and no session ticket in the last flight.
        ffi::SSL_CTX_set_session_cache_mode(c, ffi::SSL_SESS_CACHE_OFF as c_int);
        ffi::SSL_CTX_set_options(c, ffi::SSL_OP_NO_TICKET as u32);
        check(
            ffi::SSL_CTX_set_strict_cipher_list(c, CIPHERS.as_ptr()),
            "ciphers",
        )?;
        check(ffi::SSL_CTX_set1_groups_list(c, GROUPS.as_ptr()), "groups")?;
        check(
            ffi::SSL_CTX_set_srtp_profiles(c, SRTP_PROFILES.as_ptr()),
            "SRTP profiles",
        )?;

        let der = &cert.certificate;
        let mut p = der.as_ptr();
        let len = c_long::try_from(der.len()).map_err(|_| "certificate too large")?;
        let x509 = ffi::d2i_X509(ptr::null_mut(), &mut p, len);
        if x509.is_null() {
            return Err(ssl_error("certificate"));
        }
        let ok = ffi::SSL_CTX_use_certificate(c, x509);
        ffi::X509_free(x509);
        check(ok, "certificate")?;

        let der = &cert.private_key;
        let mut p = der.as_ptr();
        let len = c_long::try_from(der.len()).map_err(|_| "private key too large")?;
        let key = ffi::d2i_AutoPrivateKey(ptr::null_mut(), &mut p, len);
        if key.is_null() {
            return Err(ssl_error("private key"));
        }
        let ok = ffi::SSL_CTX_use_PrivateKey(c, key);
        ffi::EVP_PKEY_free(key);
        check(ok, "private key")?;
        check(ffi::SSL_CTX_check_private_key(c), "private key")?;

        // Ask the client for its certificate too, and take any: str0m checks its fingerprint.
        let mode = ffi::SSL_VERIFY_PEER | ffi::SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        ffi::SSL_CTX_set_custom_verify(c, mode as c_int, Some(accept_any_certificate));
        ffi::SSL_CTX_set_current_time_cb(c, Some(clock));
        Ok(ctx)
    }
}

fn check(ret: c_int, what: &str) -> Result<(), String> {
    if ret == 1 {
        Ok(())
    } else {
        Err(ssl_error(what))
    }
}

/// `what` with AWS-LC's first queued error; empties the queue.
fn ssl_error(what: &str) -> String {
    // SAFETY: ERR_get_error only touches this thread's error queue; ERR_error_string_n writes
    // at most `buf.len()` bytes including the terminating NUL.
    unsafe {
        let code = ffi::ERR_get_error();
        ffi::ERR_clear_error();
        if code == 0 {
            return format!("DTLS: {what} failed");
        }
        let mut buf = [0 as c_char; 256];
        ffi::ERR_error_string_n(code, buf.as_mut_ptr(), buf.len());
        let reason = CStr::from_ptr(buf.as_ptr()).to_string_lossy();
        format!("DTLS: {what}: {reason}")
    }
}

unsafe extern "C" fn accept_any_certificate(
    _ssl: *mut ffi::SSL,
    _out_alert: *mut u8,
) -> ffi::ssl_verify_result_t {
    ffi::ssl_verify_result_t_ssl_verify_ok
}

// ---------------------------------------------------------------------------------------------
// The clock AWS-LC sees: the `now` of the call being served, set around every call into it.

thread_local! {
    static NOW: Cell<Option<(i64, i64)>> = const { Cell::new(None) };
}

/// SSL_CTX_set_current_time_cb: AWS-LC calls it (with no SSL) when it starts or checks a timer.
unsafe extern "C" fn clock(_ssl: *const ffi::SSL, out: *mut ffi::timeval) {
    let (sec, usec) = NOW.try_with(Cell::get).ok().flatten().unwrap_or_else(|| {
        split(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    });
    if !out.is_null() {
        // SAFETY: AWS-LC passes a valid timeval to fill.
        unsafe {
            (*out).tv_sec = sec as _;
            (*out).tv_usec = usec as _;
        }
    }
}

fn split(d: Duration) -> (i64, i64) {
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_micros()),
    )
}

/// Restores the previous clock when a call into AWS-LC is over.
struct ClockGuard(Option<(i64, i64)>);

impl Drop for ClockGuard {
    fn drop(&mut self) {
        let previous = self.0;
        let _ = NOW.try_with(|c| c.set(previous));
    }
}

// ---------------------------------------------------------------------------------------------
// The BIO between AWS-LC and str0m: datagrams in, datagrams out.

#[derive(Default)]
struct Io {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

struct Method(*mut ffi::BIO_METHOD);

// SAFETY: the method table is created once, never changed and never freed.
unsafe impl Send for Method {}
// SAFETY: as for Send.
unsafe impl Sync for Method {}

fn bio_method() -> Option<*mut ffi::BIO_METHOD> {
    static METHOD: OnceLock<Option<Method>> = OnceLock::new();
    METHOD
        .get_or_init(|| {
            // SAFETY: creates and fills a method table with callbacks of the right signatures.
            unsafe {
                let kind = ffi::BIO_get_new_index() | ffi::BIO_TYPE_SOURCE_SINK as c_int;
                let m = ffi::BIO_meth_new(kind, c"str0m datagrams".as_ptr());
                if m.is_null() {
                    return None;
                }
                ffi::BIO_meth_set_write(m, Some(bio_write));
                ffi::BIO_meth_set_read(m, Some(bio_read));
                ffi::BIO_meth_set_ctrl(m, Some(bio_ctrl));
                Some(Method(m))
            }
        })
        .as_ref()
        .map(|m| m.0)
}

/// AWS-LC writes one datagram (a flight packs records up to the MTU) per call.
unsafe extern "C" fn bio_write(bio: *mut ffi::BIO, data: *const c_char, len: c_int) -> c_int {
    // SAFETY: `bio` is our BIO, whose data is the instance's `Io` (alive as long as the SSL that
    // owns the BIO, and not otherwise referenced while AWS-LC runs); `data` holds `len` bytes.
    unsafe {
        ffi::BIO_clear_retry_flags(bio);
        let io = ffi::BIO_get_data(bio).cast::<Io>();
        let Ok(n) = usize::try_from(len) else {
            return -1;
        };
        if io.is_null() || data.is_null() || (*io).outgoing.len() >= MAX_QUEUED {
            return -1;
        }
        let datagram = std::slice::from_raw_parts(data.cast::<u8>(), n);
        (*io).outgoing.push_back(datagram.to_vec());
        len
    }
}

/// One received datagram per read; "retry" when there is none.
unsafe extern "C" fn bio_read(bio: *mut ffi::BIO, buf: *mut c_char, cap: c_int) -> c_int {
    // SAFETY: as in bio_write; `buf` has room for `cap` bytes.
    unsafe {
        ffi::BIO_clear_retry_flags(bio);
        let io = ffi::BIO_get_data(bio).cast::<Io>();
        let Ok(cap) = usize::try_from(cap) else {
            return -1;
        };
        if io.is_null() || buf.is_null() {
            return -1;
        }
        match (*io).incoming.pop_front() {
            Some(datagram) => {
                // A datagram longer than AWS-LC's buffer is cut, as a socket would.
                let n = datagram.len().min(cap);
                ptr::copy_nonoverlapping(datagram.as_ptr(), buf.cast::<u8>(), n);
                n as c_int
            }
            None => {
                ffi::BIO_set_retry_read(bio);
                -1
            }
        }
    }
}

unsafe extern "C" fn bio_ctrl(
    _bio: *mut ffi::BIO,
    cmd: c_int,
    _larg: c_long,
    _parg: *mut c_void,
) -> c_long {
    // Datagrams leave when str0m polls them: flushing has nothing to do. The MTU is set with
    // SSL_set_mtu (SSL_OP_NO_QUERY_MTU), nothing else is asked of a datagram BIO.
    c_long::from(cmd == ffi::BIO_CTRL_FLUSH as c_int)
}

// ---------------------------------------------------------------------------------------------
// One connection.

#[derive(Debug)]
enum Event {
    PeerCert(Vec<u8>),
    Connected,
    KeyingMaterial(Vec<u8>, SrtpProfile),
    ApplicationData(Vec<u8>),
    CloseNotify,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Before `set_active`.
    Idle,
    /// `started`: AWS-LC's handshake ran once (for a client: its first flight went out), so
    /// its retransmission timer may be armed.
    Handshaking {
        started: bool,
    },
    Connected,
    Failed(DtlsImplError),
}

struct Instance {
    ssl: *mut ffi::SSL,
    /// The BIO's data; freed after `ssl` (which owns the BIO).
    io: *mut Io,
    /// Keeps the context (certificate) alive; SSL holds its own reference as well.
    _ctx: Arc<Ctx>,
    active: Option<bool>,
    state: State,
    /// Set by `close`; nothing is accepted afterwards.
    closing: bool,
    close_notify_received: bool,
    events: VecDeque<Event>,
    now: Instant,
    /// `now` at creation and the wall-clock time it stands for: AWS-LC's clock.
    epoch: (Instant, Duration),
    /// AWS-LC's reason for a failure, for Debug output.
    failure: Option<String>,
}

// SAFETY: the SSL object, its BIO and `Io` belong to this instance alone and are only used
// through `&mut self` (one thread at a time); AWS-LC keeps no thread affinity for them.
unsafe impl Send for Instance {}
// SAFETY: `&self` methods read Rust fields (and the length of `Io`'s queue) only, never call
// into AWS-LC, so shared references on several threads cannot race.
unsafe impl Sync for Instance {}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsLcDtlsInstance")
            .field("active", &self.active)
            .field("state", &self.state)
            .field("closing", &self.closing)
            .field("failure", &self.failure)
            .finish()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `ssl` is valid and ours; freeing it frees the BIO, after which nothing refers
        // to `io`, which came from Box::into_raw.
        unsafe {
            ffi::SSL_free(self.ssl);
            drop(Box::from_raw(self.io));
        }
    }
}

impl Instance {
    fn new(ctx: Arc<Ctx>, now: Instant, mtu: usize) -> Result<Self, String> {
        let method = bio_method().ok_or_else(|| ssl_error("BIO method"))?;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // SAFETY: `ctx.0` is a configured context; the BIO gets a pointer to a heap `Io` that
        // outlives the SSL object (see Drop; on the error path too the SSL, which owns the BIO,
        // is freed first); SSL_set_bio takes the one BIO reference.
        unsafe {
            ffi::ERR_clear_error();
            let ssl = ffi::SSL_new(ctx.0);
            if ssl.is_null() {
                return Err(ssl_error("SSL_new"));
            }
            let bio = ffi::BIO_new(method);
            if bio.is_null() {
                ffi::SSL_free(ssl);
                return Err(ssl_error("BIO_new"));
            }
            let io = Box::into_raw(Box::<Io>::default());
            ffi::BIO_set_data(bio, io.cast::<c_void>());
            ffi::BIO_set_init(bio, 1);
            ffi::SSL_set_bio(ssl, bio, bio);
            ffi::SSL_set_options(ssl, ffi::SSL_OP_NO_QUERY_MTU as u32);
            // AWS-LC refuses an MTU below 228 bytes (and would then have none).
            let mtu = u32::try_from(mtu.max(MIN_MTU)).unwrap_or(u32::MAX);
            if ffi::SSL_set_mtu(ssl, mtu) != 1 {
                ffi::SSL_free(ssl);
                drop(Box::from_raw(io));
                return Err(ssl_error("MTU"));
            }
            Ok(Self {
                ssl,
                io,
                _ctx: ctx,
                active: None,
                state: State::Idle,
                closing: false,
                close_notify_received: false,
                events: VecDeque::new(),
                now,
                epoch: (now, wall),
                failure: None,
            })
        }
    }

    /// Sets AWS-LC's clock to `self.now` until the guard drops, and clears the error queue
    /// (SSL_get_error reads it).
    fn enter(&self) -> ClockGuard {
        let (at, wall) = self.epoch;
        let t = match self.now.checked_duration_since(at) {
            Some(d) => wall.saturating_add(d),
            None => wall.saturating_sub(at - self.now),
        };
        // SAFETY: only touches this thread's error queue.
        unsafe { ffi::ERR_clear_error() };
        let previous = NOW.try_with(|c| c.replace(Some(split(t)))).ok().flatten();
        ClockGuard(previous)
    }

    fn io(&mut self) -> &mut Io {
        // SAFETY: `io` is valid for our lifetime; AWS-LC only uses it inside calls made from
        // `&mut self` methods, during which no reference from here is alive.
        unsafe { &mut *self.io }
    }

    fn queued_out(&self) -> usize {
        // SAFETY: as in `io`, read-only.
        unsafe { (*self.io).outgoing.len() }
    }

    fn fail(&mut self, error: DtlsImplError) -> DtlsImplError {
        self.state = State::Failed(error.clone());
        error
    }

    /// Runs the handshake or reads records, whichever is due, after datagrams or a timeout.
    fn progress(&mut self) -> Result<(), DtlsImplError> {
        if self.closing {
            return Ok(());
        }
        match self.state {
            State::Handshaking { .. } => {
                let _clock = self.enter();
                // SAFETY: `ssl` is valid; AWS-LC reads and writes through our BIO.
                let (ret, err) = unsafe {
                    let ret = ffi::SSL_do_handshake(self.ssl);
                    (ret, ffi::SSL_get_error(self.ssl, ret))
                };
                self.state = State::Handshaking { started: true };
                if ret == 1 {
                    self.connected()?;
                } else if err == ffi::SSL_ERROR_WANT_READ as c_int
                    || err == ffi::SSL_ERROR_WANT_WRITE as c_int
                {
                    return Ok(());
                } else {
                    let error = self.handshake_error();
                    return Err(self.fail(error));
                }
                self.read_records()
            }
            State::Connected => self.read_records(),
            State::Idle | State::Failed(_) => Ok(()),
        }
    }

    /// The handshake is done: the peer's certificate (for str0m's fingerprint check), then
    /// Connected and the SRTP keys, in that order as with str0m's own DTLS.
    fn connected(&mut self) -> Result<(), DtlsImplError> {
        let Some(cert) = self.peer_certificate() else {
            let error = if self.active == Some(true) {
                CertificateError::NoServerCertificateReceived
            } else {
                CertificateError::NoClientCertificateReceived
            };
            return Err(self.fail(DtlsImplError::CertificateError(error)));
        };
        let keying = self.keying_material()?;
        self.state = State::Connected;
        self.events.push_back(Event::PeerCert(cert));
        self.events.push_back(Event::Connected);
        if let Some((material, profile)) = keying {
            let we_are_client = self.active == Some(true);
            EXPORTED.with(|e| {
                *e.borrow_mut() = Some(Exported {
                    material: material.clone(),
                    profile,
                    we_are_client,
                })
            });
            self.events
                .push_back(Event::KeyingMaterial(material, profile));
        }
        Ok(())
    }

    fn peer_certificate(&self) -> Option<Vec<u8>> {
        // SAFETY: the chain belongs to the SSL object and is read before any other call into
        // it; CRYPTO_BUFFER_data/len describe a valid byte range.
        unsafe {
            let chain = ffi::SSL_get0_peer_certificates(self.ssl).cast::<ffi::OPENSSL_STACK>();
            if chain.is_null() || ffi::OPENSSL_sk_num(chain) == 0 {
                return None;
            }
            let leaf = ffi::OPENSSL_sk_value(chain, 0).cast::<ffi::CRYPTO_BUFFER>();
            if leaf.is_null() {
                return None;
            }
            let data = ffi::CRYPTO_BUFFER_data(leaf);
            let len = ffi::CRYPTO_BUFFER_len(leaf);
            if data.is_null() || len == 0 {
                return None;
            }
            Some(std::slice::from_raw_parts(data, len).to_vec())
        }
    }

    /// RFC 5764 keying material for the negotiated SRTP profile; none if the peer offered no
    /// profile we know (str0m then has no SRTP, as with a data-channel-only peer).
    fn keying_material(&mut self) -> Result<Option<(Vec<u8>, SrtpProfile)>, DtlsImplError> {
        // SAFETY: the profile is a static table entry (or null).
        let id = unsafe {
            let p = ffi::SSL_get_selected_srtp_profile(self.ssl);
            if p.is_null() {
                return Ok(None);
            }
            (*p).id
        };
        const AES128_CM_SHA1_80: c_ulong = ffi::SRTP_AES128_CM_SHA1_80 as c_ulong;
        const AEAD_AES_128_GCM: c_ulong = ffi::SRTP_AEAD_AES_128_GCM as c_ulong;
        const AEAD_AES_256_GCM: c_ulong = ffi::SRTP_AEAD_AES_256_GCM as c_ulong;
        let profile = match id {
            AES128_CM_SHA1_80 => SrtpProfile::AES128_CM_SHA1_80,
            AEAD_AES_128_GCM => SrtpProfile::AEAD_AES_128_GCM,
            AEAD_AES_256_GCM => SrtpProfile::AEAD_AES_256_GCM,
            _ => return Ok(None),
        };
        let mut material = vec![0; profile.keying_material_len()];
        // SAFETY: `material` has room for `material.len()` bytes; the label is that long.
        let ok = unsafe {
            ffi::SSL_export_keying_material(
                self.ssl,
                material.as_mut_ptr(),
                material.len(),
                SRTP_LABEL.as_ptr().cast::<c_char>(),
                SRTP_LABEL.len(),
                ptr::null(),
                0,
                0,
            )
        };
        if ok != 1 {
            let operation = CryptoOperation::ExtractSrtpKeyingMaterial;
            let error = DtlsImplError::CryptoError(dimpl::CryptoError::OperationFailed(operation));
            return Err(self.fail(error));
        }
        Ok(Some((material, profile)))
    }

    /// Application data (and the peer's close_notify) from the queued datagrams. Records that
    /// fail authentication are dropped by AWS-LC, as DTLS does.
    fn read_records(&mut self) -> Result<(), DtlsImplError> {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let result = loop {
            let _clock = self.enter();
            // SAFETY: `buf` has room for MAX_PLAINTEXT bytes.
            let (n, err) = unsafe {
                let n = ffi::SSL_read(
                    self.ssl,
                    buf.as_mut_ptr().cast::<c_void>(),
                    MAX_PLAINTEXT as c_int,
                );
                (n, ffi::SSL_get_error(self.ssl, n))
            };
            if n > 0 {
                self.events
                    .push_back(Event::ApplicationData(buf[..n as usize].to_vec()));
                continue;
            }
            if err == ffi::SSL_ERROR_ZERO_RETURN as c_int {
                if !self.close_notify_received {
                    self.close_notify_received = true;
                    self.events.push_back(Event::CloseNotify);
                }
                break Ok(());
            }
            if err == ffi::SSL_ERROR_WANT_READ as c_int || err == ffi::SSL_ERROR_WANT_WRITE as c_int
            {
                break Ok(());
            }
            // A fatal alert or protocol error from an authenticated peer ends the connection.
            let error = self.handshake_error();
            break Err(self.fail(error));
        };
        // Whatever AWS-LC did not read (nothing, normally) is dropped, not kept for later.
        self.io().incoming.clear();
        result
    }

    /// Maps AWS-LC's error to the closest error of str0m's DTLS API (str0m only passes on its
    /// text) and keeps AWS-LC's own reason for Debug output.
    fn handshake_error(&mut self) -> DtlsImplError {
        // SAFETY: reads this thread's error queue.
        let code = unsafe { ffi::ERR_peek_error() };
        self.failure = Some(if code == 0 {
            "DTLS failed".to_string()
        } else {
            ssl_error("handshake")
        });
        // ERR_GET_LIB / ERR_GET_REASON.
        let lib = ((code >> 24) & 0xff) as c_int;
        let reason = (code & 0xfff) as c_int;
        let failed = |op| DtlsImplError::CryptoError(dimpl::CryptoError::OperationFailed(op));
        if lib == ffi::ERR_LIB_X509 || lib == ffi::ERR_LIB_ASN1 {
            return DtlsImplError::CertificateError(CertificateError::ParseFailed);
        }
        if lib != ffi::ERR_LIB_SSL {
            return failed(CryptoOperation::CompleteKeyExchange);
        }
        if reason >= ffi::SSL_AD_REASON_OFFSET {
            // The peer's fatal alert.
            let description = u8::try_from(reason - ffi::SSL_AD_REASON_OFFSET).unwrap_or(u8::MAX);
            return DtlsImplError::SecurityError(SecurityError::FatalAlert { description });
        }
        let active = self.active == Some(true);
        match reason {
            ffi::SSL_R_READ_TIMEOUT_EXPIRED => DtlsImplError::Timeout(TimeoutError::Handshake),
            ffi::SSL_R_NO_SHARED_CIPHER | ffi::SSL_R_NO_SHARED_GROUP => {
                DtlsImplError::SecurityError(SecurityError::NoMutuallyAcceptableCipherSuite)
            }
            ffi::SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE => {
                DtlsImplError::CertificateError(CertificateError::NoClientCertificateReceived)
            }
            ffi::SSL_R_DIGEST_CHECK_FAILED if active => {
                DtlsImplError::SecurityError(SecurityError::ServerFinishedVerificationFailed)
            }
            ffi::SSL_R_DIGEST_CHECK_FAILED => {
                DtlsImplError::SecurityError(SecurityError::ClientFinishedVerificationFailed)
            }
            ffi::SSL_R_BAD_SIGNATURE
            | ffi::SSL_R_WRONG_SIGNATURE_TYPE
            | ffi::SSL_R_NO_COMMON_SIGNATURE_ALGORITHMS => failed(CryptoOperation::VerifySignature),
            ffi::SSL_R_WRONG_CERTIFICATE_TYPE => {
                DtlsImplError::CertificateError(CertificateError::InvalidSubjectPublicKey)
            }
            // Malformed or unexpected handshake messages, unsupported versions and the like.
            _ => failed(CryptoOperation::VerifyData),
        }
    }

    fn next_timeout(&self) -> Instant {
        let later = |d: Duration| self.now.checked_add(d).unwrap_or(self.now);
        match self.state {
            // Due at once: str0m's handle_timeout then reports the failure and closes the Rtc.
            State::Failed(_) => self.now,
            State::Handshaking { started } if !self.closing => {
                let mut timer = None;
                if started {
                    let mut tv = ffi::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    let _clock = self.enter();
                    // SAFETY: `tv` is a valid timeval to fill.
                    if unsafe { ffi::DTLSv1_get_timeout(self.ssl, &mut tv) } == 1 {
                        let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
                        let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
                        timer = Some(Duration::from_secs(secs) + Duration::from_micros(micros));
                    }
                }
                later(timer.map_or(HANDSHAKE_TICK, |t| t.min(HANDSHAKE_TICK)))
            }
            _ => later(IDLE),
        }
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        if self.active.is_some() {
            return;
        }
        self.active = Some(active);
        self.state = State::Handshaking { started: false };
        // SAFETY: `ssl` is valid.
        unsafe {
            if active {
                ffi::SSL_set_connect_state(self.ssl);
            } else {
                ffi::SSL_set_accept_state(self.ssl);
            }
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        if self.closing || matches!(self.state, State::Idle | State::Failed(_)) {
            return Ok(());
        }
        // An empty "packet" (str0m's nudge after set_active) only drives the handshake.
        if !packet.is_empty() {
            let io = self.io();
            if io.incoming.len() >= MAX_QUEUED {
                return Err(DtlsImplError::ReceiveQueueFull);
            }
            io.incoming.push_back(packet.to_vec());
        }
        self.progress()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        if let Some(datagram) = self.io().outgoing.front() {
            let n = datagram.len();
            if buf.len() < n {
                return DtlsOutput::BufferTooSmall { needed: n };
            }
            buf[..n].copy_from_slice(datagram);
            self.io().outgoing.pop_front();
            return DtlsOutput::Packet(&buf[..n]);
        }
        let needed = match self.events.front() {
            Some(Event::PeerCert(d) | Event::ApplicationData(d)) => d.len(),
            _ => 0,
        };
        if buf.len() < needed {
            return DtlsOutput::BufferTooSmall { needed };
        }
        match self.events.pop_front() {
            Some(Event::PeerCert(der)) => {
                buf[..needed].copy_from_slice(&der);
                DtlsOutput::PeerCert(&buf[..needed])
            }
            Some(Event::ApplicationData(data)) => {
                buf[..needed].copy_from_slice(&data);
                DtlsOutput::ApplicationData(&buf[..needed])
            }
            Some(Event::Connected) => DtlsOutput::Connected,
            Some(Event::KeyingMaterial(material, profile)) => {
                DtlsOutput::KeyingMaterial(KeyingMaterial::new(&material), profile)
            }
            Some(Event::CloseNotify) => DtlsOutput::CloseNotify,
            None => DtlsOutput::Timeout(self.next_timeout()),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = self.now.max(now);
        match &self.state {
            State::Failed(error) => Err(error.clone()),
            &State::Handshaking { started } if !self.closing => {
                if started {
                    let _clock = self.enter();
                    // SAFETY: `ssl` is valid; a due timer resends the last flight via the BIO.
                    if unsafe { ffi::DTLSv1_handle_timeout(self.ssl) } < 0 {
                        let error = self.handshake_error();
                        return Err(self.fail(error));
                    }
                }
                // The client's first flight goes out here, on str0m's first timeout.
                self.progress()
            }
            _ => Ok(()),
        }
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        if self.closing {
            return Err(DtlsImplError::ConnectionClosed);
        }
        match &self.state {
            State::Failed(error) => return Err(error.clone()),
            State::Connected => {}
            _ => return Ok(0),
        }
        if data.is_empty() {
            return Ok(0);
        }
        if data.len() > MAX_PLAINTEXT {
            let operation = CryptoOperation::Encrypt;
            return Err(DtlsImplError::CryptoError(
                dimpl::CryptoError::OperationFailed(operation),
            ));
        }
        if self.queued_out() >= MAX_QUEUED {
            // Not accepted: str0m keeps it and tries again after polling.
            return Ok(0);
        }
        let _clock = self.enter();
        // SAFETY: `data` is valid for `data.len()` bytes (at most MAX_PLAINTEXT, fits c_int).
        let n = unsafe {
            ffi::SSL_write(
                self.ssl,
                data.as_ptr().cast::<c_void>(),
                data.len() as c_int,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => {
                let operation = CryptoOperation::Encrypt;
                Err(DtlsImplError::CryptoError(
                    dimpl::CryptoError::OperationFailed(operation),
                ))
            }
        }
    }

    fn is_active(&self) -> bool {
        self.active == Some(true)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        (self.state == State::Connected).then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.closing && self.queued_out() > 0
    }

    fn is_closed(&self) -> bool {
        self.closing && self.queued_out() == 0
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        if self.closing {
            return Ok(());
        }
        self.closing = true;
        if self.state == State::Connected {
            let _clock = self.enter();
            // SAFETY: `ssl` is valid; the close_notify alert goes out through the BIO.
            unsafe { ffi::SSL_shutdown(self.ssl) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use str0m::change::SdpAnswer;
    use str0m::net::Receive;
    use str0m::{Candidate, Event, Input, Output, Rtc, RtcError};

    use super::*;

    fn ecdsa() -> DtlsCert {
        crypto_provider()
            .dtls_provider
            .generate_certificate()
            .unwrap()
    }

    /// What GStreamer's webrtcbin (OpenSSL) presents: a self-signed RSA-2048 certificate.
    fn rsa() -> DtlsCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["webrtcbin".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        DtlsCert {
            certificate: cert.der().to_vec(),
            private_key: key.serialize_der(),
        }
    }

    fn ours() -> &'static dyn DtlsProvider {
        crypto_provider().dtls_provider
    }

    /// str0m's default DTLS (dimpl), what the SFU ran before.
    fn dimpl() -> &'static dyn DtlsProvider {
        static DEFAULT: OnceLock<CryptoProvider> = OnceLock::new();
        DEFAULT
            .get_or_init(str0m::crypto::from_feature_flags)
            .dtls_provider
    }

    struct Peer {
        dtls: Box<dyn DtlsInstance>,
        cert: DtlsCert,
        peer_cert: Option<Vec<u8>>,
        connected: bool,
        keying: Option<(Vec<u8>, SrtpProfile)>,
        received: Vec<Vec<u8>>,
        close_notify: bool,
        timeout: Option<Instant>,
    }

    fn peer(provider: &dyn DtlsProvider, cert: DtlsCert, now: Instant, active: bool) -> Peer {
        let mut dtls = provider
            .new_dtls(&cert, now, DtlsVersion::Dtls12, Some(1150))
            .unwrap();
        dtls.set_active(active);
        dtls.handle_timeout(now).unwrap();
        Peer {
            dtls,
            cert,
            peer_cert: None,
            connected: false,
            keying: None,
            received: Vec::new(),
            close_notify: false,
            timeout: None,
        }
    }

    /// Drains `from`'s output; returns its datagrams.
    fn poll(from: &mut Peer) -> Vec<Vec<u8>> {
        let mut buf = vec![0; 2000];
        let mut datagrams = Vec::new();
        loop {
            match from.dtls.poll_output(&mut buf) {
                DtlsOutput::Packet(p) => {
                    assert!(p.len() <= 1150, "datagram of {} bytes", p.len());
                    datagrams.push(p.to_vec());
                }
                DtlsOutput::Timeout(t) => {
                    from.timeout = Some(t);
                    return datagrams;
                }
                DtlsOutput::Connected => from.connected = true,
                DtlsOutput::PeerCert(c) => from.peer_cert = Some(c.to_vec()),
                DtlsOutput::KeyingMaterial(k, p) => from.keying = Some((k.to_vec(), p)),
                DtlsOutput::ApplicationData(d) => from.received.push(d.to_vec()),
                DtlsOutput::CloseNotify => from.close_notify = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Moves datagrams both ways until neither side has anything to send.
    fn exchange(a: &mut Peer, b: &mut Peer) {
        for _ in 0..20 {
            let to_b = poll(a);
            let to_a = poll(b);
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            for d in to_b {
                b.dtls.handle_packet(&d).unwrap();
            }
            for d in to_a {
                a.dtls.handle_packet(&d).unwrap();
            }
        }
        panic!("no quiescence");
    }

    fn connect(client: &mut Peer, server: &mut Peer) {
        exchange(client, server);
        assert!(client.connected && server.connected);
        // Each side reports the other's certificate, for str0m's fingerprint check.
        assert_eq!(client.peer_cert.as_ref(), Some(&server.cert.certificate));
        assert_eq!(server.peer_cert.as_ref(), Some(&client.cert.certificate));
        let (ck, cp) = client.keying.clone().expect("client keying material");
        let (sk, sp) = server.keying.clone().expect("server keying material");
        assert_eq!((&ck, cp), (&sk, sp));
        assert_eq!(ck.len(), cp.keying_material_len());
        assert!(ck.iter().any(|b| *b != 0));
    }

    fn talk(a: &mut Peer, b: &mut Peer) {
        assert_eq!(a.dtls.send_application_data(b"ping").unwrap(), 4);
        assert_eq!(b.dtls.send_application_data(b"pong!").unwrap(), 5);
        exchange(a, b);
        assert_eq!(b.received, vec![b"ping".to_vec()]);
        assert_eq!(a.received, vec![b"pong!".to_vec()]);
    }

    fn close(a: &mut Peer, b: &mut Peer) {
        a.dtls.close().unwrap();
        assert!(a.dtls.is_closing() && !a.dtls.is_closed());
        exchange(a, b);
        assert!(a.dtls.is_closed());
        assert!(b.close_notify);
        assert_eq!(
            a.dtls.send_application_data(b"late"),
            Err(DtlsImplError::ConnectionClosed)
        );
    }

    fn full_run(client: (&dyn DtlsProvider, DtlsCert), server: (&dyn DtlsProvider, DtlsCert)) {
        let now = Instant::now();
        let mut c = peer(client.0, client.1, now, true);
        let mut s = peer(server.0, server.1, now, false);
        assert!(c.dtls.is_active() && !s.dtls.is_active());
        connect(&mut c, &mut s);
        assert_eq!(c.dtls.protocol_version(), Some(ProtocolVersion::DTLS1_2));
        assert_eq!(s.dtls.protocol_version(), Some(ProtocolVersion::DTLS1_2));
        talk(&mut c, &mut s);
        close(&mut c, &mut s);
    }

    #[test]
    fn ecdsa_client_ecdsa_server() {
        full_run((ours(), ecdsa()), (ours(), ecdsa()));
    }

    /// The SFU (passive) and a GStreamer publisher: what str0m's own DTLS refuses.
    #[test]
    fn rsa_client_ecdsa_server() {
        full_run((ours(), rsa()), (ours(), ecdsa()));
    }

    /// The SFU active towards a peer with an RSA certificate.
    #[test]
    fn ecdsa_client_rsa_server() {
        full_run((ours(), ecdsa()), (ours(), rsa()));
    }

    /// Browsers and str0m peers use ECDSA with str0m's own DTLS on the other side (the
    /// integration tests run whole sessions against it).
    #[test]
    fn interoperates_with_str0m_dtls() {
        full_run((dimpl(), ecdsa()), (ours(), ecdsa()));
        full_run((ours(), ecdsa()), (dimpl(), ecdsa()));
    }

    #[test]
    fn prefers_aes_256_gcm_like_str0m() {
        let now = Instant::now();
        let mut c = peer(dimpl(), ecdsa(), now, true);
        let mut s = peer(ours(), ecdsa(), now, false);
        connect(&mut c, &mut s);
        assert_eq!(s.keying.unwrap().1, SrtpProfile::AEAD_AES_256_GCM);
    }

    /// AWS-LC's timers run on str0m's clock: a lost flight is sent again once `now` passes
    /// the retransmission timeout (1 s), not on the wall clock.
    #[test]
    fn retransmits_lost_flight_on_given_clock() {
        let start = Instant::now();
        let mut c = peer(ours(), ecdsa(), start, true);
        let mut s = peer(ours(), ecdsa(), start, false);
        let hello = poll(&mut c);
        assert!(!hello.is_empty());
        // Lost. Until the handshake is done the instance asks for a tick at least every 250 ms.
        let mut now = start;
        let resent = loop {
            let due = c.timeout.unwrap();
            assert!(due > now && due <= now + HANDSHAKE_TICK, "{:?}", due - now);
            now = due;
            c.dtls.handle_timeout(now).unwrap();
            let out = poll(&mut c);
            if !out.is_empty() {
                break out;
            }
            assert!(now - start < Duration::from_secs(2));
        };
        assert!(now - start >= Duration::from_secs(1), "{:?}", now - start);
        // The same ClientHello in a record with the next sequence number.
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0][13..], hello[0][13..]);
        assert_ne!(resent[0][..13], hello[0][..13]);
        s.dtls.handle_timeout(now).unwrap();
        for d in resent {
            s.dtls.handle_packet(&d).unwrap();
        }
        connect(&mut c, &mut s);
        // Nothing left to time: the next timeout is far away.
        assert!(c.timeout.unwrap() > now + Duration::from_secs(3600));
        assert!(s.timeout.unwrap() > now + Duration::from_secs(3600));
    }

    /// The server's last flight (ChangeCipherSpec, Finished) is lost: the client sends its
    /// flight again and the connected server answers it again.
    #[test]
    fn retransmits_final_flight() {
        let mut now = Instant::now();
        let mut c = peer(ours(), rsa(), now, true);
        let mut s = peer(ours(), ecdsa(), now, false);
        for d in poll(&mut c) {
            s.dtls.handle_packet(&d).unwrap();
        }
        for d in poll(&mut s) {
            c.dtls.handle_packet(&d).unwrap();
        }
        for d in poll(&mut c) {
            s.dtls.handle_packet(&d).unwrap();
        }
        let lost = poll(&mut s);
        assert!(s.connected && !lost.is_empty());
        assert!(poll(&mut c).is_empty() && !c.connected);
        let resent = loop {
            now = c.timeout.unwrap();
            c.dtls.handle_timeout(now).unwrap();
            let out = poll(&mut c);
            if !out.is_empty() {
                break out;
            }
        };
        for d in resent {
            s.dtls.handle_packet(&d).unwrap();
        }
        connect(&mut c, &mut s);
        talk(&mut c, &mut s);
    }

    /// A peer that never answers: the handshake gives up (AWS-LC's retry limit) with an error
    /// from handle_timeout, which makes str0m close the connection.
    #[test]
    fn handshake_times_out() {
        let mut now = Instant::now();
        let mut c = peer(ours(), ecdsa(), now, true);
        let mut error = None;
        for _ in 0..2000 {
            poll(&mut c);
            now = c.timeout.unwrap();
            if let Err(e) = c.dtls.handle_timeout(now) {
                error = Some(e);
                break;
            }
        }
        assert_eq!(error, Some(DtlsImplError::Timeout(TimeoutError::Handshake)));
        assert_eq!(c.dtls.handle_packet(b"late"), Ok(()));
    }

    /// Junk from the network (truncated or corrupted records, random bytes) neither panics nor
    /// breaks the connection being made or the one established.
    #[test]
    fn survives_garbage() {
        let now = Instant::now();
        let mut c = peer(ours(), rsa(), now, true);
        let mut s = peer(ours(), ecdsa(), now, false);
        let junk: Vec<Vec<u8>> = vec![
            vec![0],
            vec![22; 13],
            vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 5, 0, 20, 1, 2, 3],
            (0..=255).collect(),
            vec![0xff; 1500],
        ];
        for j in &junk {
            let _ = s.dtls.handle_packet(j);
        }
        let hello = poll(&mut c);
        for d in &hello {
            let mut bad = d.clone();
            let n = bad.len();
            bad[n / 2] ^= 0x55;
            let _ = s.dtls.handle_packet(&bad[..n - 3]);
        }
        // The corrupted hello may have made the server answer; the client throws away what does
        // not fit and the real hello still connects.
        for d in hello {
            s.dtls.handle_packet(&d).unwrap();
        }
        connect(&mut c, &mut s);
        for j in &junk {
            c.dtls.handle_packet(j).unwrap();
            s.dtls.handle_packet(j).unwrap();
        }
        talk(&mut c, &mut s);
    }

    #[test]
    fn application_data_waits_for_handshake() {
        let now = Instant::now();
        let mut c = peer(ours(), ecdsa(), now, true);
        assert_eq!(c.dtls.send_application_data(b"early").unwrap(), 0);
        assert_eq!(c.dtls.send_application_data(b"").unwrap(), 0);
        assert_eq!(c.dtls.protocol_version(), None);
    }

    /// Flights are cut to the MTU str0m asks for; one below AWS-LC's minimum is raised to
    /// ours (256) instead of leaving AWS-LC without one.
    #[test]
    fn flights_fit_the_mtu() {
        let now = Instant::now();
        let mut c = peer(ours(), rsa(), now, true);
        let mut s = peer(ours(), ecdsa(), now, false);
        for (p, mtu) in [(&mut c, 100), (&mut s, 300)] {
            p.dtls = ours()
                .new_dtls(&p.cert, now, DtlsVersion::Dtls12, Some(mtu))
                .unwrap();
            p.dtls.set_active(mtu == 100);
            p.dtls.handle_timeout(now).unwrap();
        }
        let mut largest = [0; 2];
        for _ in 0..20 {
            let to_s = poll(&mut c);
            let to_c = poll(&mut s);
            if to_s.is_empty() && to_c.is_empty() {
                break;
            }
            for d in to_s {
                largest[0] = largest[0].max(d.len());
                s.dtls.handle_packet(&d).unwrap();
            }
            for d in to_c {
                largest[1] = largest[1].max(d.len());
                c.dtls.handle_packet(&d).unwrap();
            }
        }
        assert!(c.connected && s.connected);
        assert!(largest[0] <= MIN_MTU && largest[1] <= 300, "{largest:?}");
    }

    #[test]
    fn rejects_key_of_another_certificate() {
        let a = ecdsa();
        let b = ecdsa();
        let mixed = DtlsCert {
            certificate: a.certificate,
            private_key: b.private_key,
        };
        let result = ours().new_dtls(&mixed, Instant::now(), DtlsVersion::Dtls12, None);
        assert!(result.is_err());
    }

    // ------------------------------------------------------------------ whole str0m sessions

    struct Side {
        rtc: Rtc,
        addr: SocketAddr,
        events: Vec<Event>,
        error: Option<RtcError>,
    }

    fn side(cert: DtlsCert, port: u16, now: Instant) -> Side {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(crypto_provider())
            .set_dtls_cert(cert)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Side {
            rtc,
            addr,
            events: Vec::new(),
            error: None,
        }
    }

    /// Drains `from`, handing its datagrams to `to`; whether anything moved.
    fn flow(from: &mut Side, to: &mut Side, now: Instant) -> bool {
        let mut moved = false;
        while from.error.is_none() && from.rtc.is_alive() {
            match from.rtc.poll_output() {
                Ok(Output::Timeout(_)) => break,
                Ok(Output::Event(e)) => from.events.push(e),
                Ok(Output::Transmit(t)) => {
                    moved = true;
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: t.proto,
                            source: from.addr,
                            destination: to.addr,
                            contents: (&*t.contents).try_into().unwrap(),
                        },
                    );
                    if to.error.is_none() && to.rtc.is_alive() {
                        if let Err(e) = to.rtc.handle_input(input) {
                            to.error = Some(e);
                        }
                    }
                }
                Err(e) => from.error = Some(e),
            }
        }
        moved
    }

    /// Runs two str0m peers in 10 ms steps until `done` (at most 10 s).
    fn run(a: &mut Side, b: &mut Side, now: &mut Instant, done: impl Fn(&Side, &Side) -> bool) {
        let end = *now + Duration::from_secs(10);
        while *now < end && !done(a, b) {
            for _ in 0..100 {
                let ab = flow(a, b, *now);
                let ba = flow(b, a, *now);
                if !ab && !ba {
                    break;
                }
            }
            *now += Duration::from_millis(10);
            for s in [&mut *a, &mut *b] {
                if s.error.is_none() && s.rtc.is_alive() {
                    if let Err(e) = s.rtc.handle_input(Input::Timeout(*now)) {
                        s.error = Some(e);
                    }
                }
            }
        }
    }

    fn data_of(s: &Side) -> Vec<Vec<u8>> {
        s.events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) => Some(d.data.clone()),
                _ => None,
            })
            .collect()
    }

    /// Offer from `a`, answer from `b` (`tamper` edits the answer), a data channel each way.
    fn session(
        a_cert: DtlsCert,
        b_cert: DtlsCert,
        tamper: impl Fn(String) -> String,
    ) -> (Side, Side) {
        let mut now = Instant::now();
        let mut a = side(a_cert, 5000, now);
        let mut b = side(b_cert, 6000, now);
        let mut api = a.rtc.sdp_api();
        let cid = api.add_channel("chat".to_string());
        let (offer, pending) = api.apply().unwrap();
        let answer = b.rtc.sdp_api().accept_offer(offer).unwrap();
        let answer = SdpAnswer::from_sdp_string(&tamper(answer.to_sdp_string())).unwrap();
        a.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let open = |s: &Side| s.events.iter().any(|e| matches!(e, Event::ChannelOpen(..)));
        run(&mut a, &mut b, &mut now, |a, b| {
            (open(a) && open(b)) || a.error.is_some() || b.error.is_some()
        });
        if a.error.is_some() || b.error.is_some() {
            return (a, b);
        }
        a.rtc.channel(cid).unwrap().write(true, b"from a").unwrap();
        let bid = b
            .events
            .iter()
            .find_map(|e| match e {
                Event::ChannelOpen(id, _) => Some(*id),
                _ => None,
            })
            .unwrap();
        b.rtc.channel(bid).unwrap().write(true, b"from b").unwrap();
        run(&mut a, &mut b, &mut now, |a, b| {
            !data_of(a).is_empty() && !data_of(b).is_empty()
        });
        (a, b)
    }

    #[test]
    fn str0m_session_with_rsa_peer() {
        // str0m's answerer takes the active (client) role: RSA on the server side, then on the
        // client side.
        for (a, b) in [(rsa(), ecdsa()), (ecdsa(), rsa())] {
            let (a, b) = session(a, b, |sdp| sdp);
            assert!(
                a.error.is_none() && b.error.is_none(),
                "{:?} {:?}",
                a.error,
                b.error
            );
            assert!(a.events.iter().any(|e| matches!(e, Event::Connected)));
            assert_eq!(data_of(&a), vec![b"from b".to_vec()]);
            assert_eq!(data_of(&b), vec![b"from a".to_vec()]);
        }
    }

    /// A certificate that does not match the SDP's fingerprint fails the connection, as str0m
    /// does with its own DTLS: we report the certificate actually presented.
    #[test]
    fn str0m_rejects_forged_fingerprint() {
        let forge = |sdp: String| {
            let at = sdp.find("a=fingerprint:sha-256 ").unwrap() + "a=fingerprint:sha-256 ".len();
            let mut sdp = sdp.into_bytes();
            sdp[at] = if sdp[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(sdp).unwrap()
        };
        let (a, b) = session(rsa(), ecdsa(), forge);
        let error = a.error.expect("a fails");
        assert!(error.to_string().contains("fingerprint"), "{error}");
        assert!(!a.events.iter().any(|e| matches!(e, Event::Connected)));
        assert!(data_of(&b).is_empty());
    }
}
