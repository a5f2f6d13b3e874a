//! Sending outputs: headers of an output letter, and the producer call shared by the forward
//! path and the script workers (a refused record becomes a dead letter at once).

use std::sync::Arc;

use pigeon_headers::RawHeaders;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use tokio::sync::mpsc;

use super::context::{output_dead_letter, Delivery, RouterProducerContext};
use super::RouterStats;
use crate::deadletter::CaptureMessage;
use crate::deadletter::{ErrorKind, Job, NewDeadLetter};
use crate::route::{Contracts, Route};
use crate::source::LetterHeaders;
use crate::telemetry::{self, LetterSpan, TraceParent};
use pigeon_core::fault;
use pigeon_core::plan::{self, LetterRef, Output, Refusal};
use pigeon_sdk::header;

/// A record of one output letter.
pub type OutputRecord<'a> = BaseRecord<'a, [u8], [u8], Box<Delivery>>;

/// The producer and where refused outputs go.
pub struct Outputs {
    /// The router's producer.
    pub producer: Arc<ThreadedProducer<RouterProducerContext>>,
    /// Dead letters to store.
    pub dead_letters: mpsc::UnboundedSender<Job>,
    /// Counters.
    pub stats: Arc<RouterStats>,
}

impl Outputs {
    /// Hands a record to the producer. Gives it back when the queue is full (try again after
    /// a moment); a record the producer refuses outright is dead-lettered.
    pub fn try_send<'a>(&self, record: OutputRecord<'a>) -> Result<(), OutputRecord<'a>> {
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => Err(back),
            Err((error, back)) => {
                // Refused before it left (too large, unknown topic...).
                let output = owned(&back);
                let delivery = back.delivery_opaque;
                let dead_letter = output_dead_letter(&output, &delivery, error.to_string());
                self.stats.dead_lettered(ErrorKind::Produce);
                delivery.route.counts.failed();
                delivery.route.metrics.output_failed(delivery.destination);
                let _ = self.dead_letters.send(Job {
                    dead_letter,
                    ledger: delivery.ledger,
                    offset: delivery.offset,
                });
                Ok(())
            }
        }
    }
}

impl Outputs {
    /// Parks an output its destination would refuse (`reason`: a field it lacks): a dead
    /// letter kept as it would have been sent, for an operator, who can fix the payload and
    /// redrive it to the same destination. The store write settles it.
    pub fn park(&self, record: &OutputRecord<'_>, reason: String) {
        let mut dead_letter = output_dead_letter(&owned(record), &record.delivery_opaque, reason);
        dead_letter.error_kind = ErrorKind::Dictionary;
        dead_letter.first_retry = None;
        self.stats.dead_lettered(ErrorKind::Dictionary);
        let delivery = &record.delivery_opaque;
        delivery.route.counts.failed();
        delivery.route.metrics.output_failed(delivery.destination);
        let _ = self.dead_letters.send(Job {
            dead_letter,
            ledger: Arc::clone(&delivery.ledger),
            offset: delivery.offset,
        });
    }
}

/// The record that sends a planned output of `message` (whose headers are `input`); `trace`,
/// the `ce_traceparent` of a sampled letter's outputs.
pub fn record<'a, M: Message>(
    message: &M,
    input: &LetterHeaders<'_>,
    output: &'a Output<'a>,
    delivery: Delivery,
    trace: Option<&TraceParent>,
) -> OutputRecord<'a> {
    let headers =
        output_headers(message, input, &output.id, &output.tag, &delivery.route.id, output.rewritten, trace);
    let mut record = BaseRecord::with_opaque_to(output.topic, Box::new(delivery)).headers(headers);
    if let Some(key) = &output.key {
        record = record.key(key.as_ref());
    }
    if let Some(payload) = &output.payload {
        record = record.payload(payload.as_ref());
    }
    record
}

/// The letter as the plan reads it: `id` and `tag` as the caller found them, source and time
/// from its headers, `time_ms` its time.
pub fn letter_ref<'a, 'h: 'a, M: Message>(
    message: &'a M,
    input: &LetterHeaders<'h>,
    id: &'a str,
    tag: &'a str,
    time_ms: i64,
) -> LetterRef<'a> {
    let payload = message.payload();
    let seen = crate::script::ScriptLetter {
        id,
        tag,
        source: input.text(header::SOURCE).unwrap_or(message.topic()),
        key: message.key(),
        time: input.text(header::TIME),
        payload: payload.unwrap_or(b"null"),
    };
    LetterRef { seen, payload, time_ms }
}

/// The dead letter of an output `pigeon` (id, version) made and could not deliver: the output
/// kept whole (its id and tag from its headers), retried first after `first_retry`.
pub fn dead_output<M>(
    output: &M,
    pigeon: (&str, i64),
    kind: ErrorKind,
    error: String,
    first_retry: Option<std::time::Duration>,
) -> NewDeadLetter
where
    M: Message,
    M::Headers: RawHeaders,
{
    let header = |name: &str| {
        pigeon_headers::of(output)
            .find(|h| h.is(name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut dead = NewDeadLetter::from_message(output, kind, error);
    dead.letter_id = header(header::ID).unwrap_or_default();
    dead.dest_topic = Some(output.topic().to_owned());
    dead.dest_tag = header(header::TYPE);
    dead.pigeon_id = Some(pigeon.0.to_owned());
    dead.pigeon_version = Some(pigeon.1);
    dead.first_retry = first_retry;
    dead
}

/// The dead letter of a letter `route` refuses (it does not fit the pigeon's dictionary, or
/// its script failed): the source letter kept whole, for that pigeon alone. One that does not
/// fit is parked for an operator; a script's failure is retried on the default schedule.
pub fn refused<M>(message: &M, id: &str, route: &Route, refusal: Refusal) -> NewDeadLetter
where
    M: Message,
    M::Headers: RawHeaders,
{
    let mut dead = NewDeadLetter::from_message(message, refusal.kind, refusal.reason);
    dead.letter_id = id.to_owned();
    dead.pigeon_id = Some(route.id.to_string());
    dead.pigeon_version = Some(route.version);
    if refusal.kind == ErrorKind::Dictionary {
        dead.first_retry = None;
    }
    dead
}

/// The output's headers: the input's (`input`, read once per letter), with the output's id and
/// tag, the pigeon, attempt 1, and the CloudEvents attributes a foreign letter lacks. `json`
/// marks a payload the bus wrote. `trace` replaces `ce_traceparent` (a sampled letter's
/// span); without it the input's is copied as it came.
pub fn output_headers<M: Message>(
    message: &M,
    input: &LetterHeaders<'_>,
    id: &str,
    tag: &str,
    pigeon: &str,
    json: bool,
    trace: Option<&TraceParent>,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(input.len() + 9);
    let (mut has_spec, mut has_source, mut has_time) = (false, false, false);
    let mut hops = 0;
    // Names compared as bytes: no UTF-8 check per output.
    let is = |name: &[u8], header: &str| name == header.as_bytes();
    for input in input.iter() {
        let name = input.name;
        if is(name, header::HOPS) {
            // The most of them, as the router judged the letter by ([`hops_in`]).
            hops = hops.max(hops_of(input.text()));
            continue;
        }
        if is(name, header::TYPE)
            || is(name, header::PIGEON)
            || is(name, header::ATTEMPT)
            || is(name, header::ID)
            || (json && is(name, header::CONTENT_TYPE))
            || (trace.is_some() && is(name, header::TRACEPARENT))
        {
            continue;
        }
        has_spec |= is(name, header::SPECVERSION);
        has_source |= is(name, header::SOURCE);
        has_time |= is(name, header::TIME);
        headers = pigeon_headers::add(headers, input.name, input.value);
    }
    headers = headers
        .insert(text(header::ID, id))
        .insert(text(header::TYPE, tag))
        .insert(text(header::PIGEON, pigeon))
        .insert(text(header::ATTEMPT, "1"));
    let mut digits = [0u8; 10];
    headers = headers
        .insert(Header { key: header::HOPS, value: Some(decimal(hops.saturating_add(1), &mut digits)) });
    if json {
        headers = headers.insert(text(header::CONTENT_TYPE, pigeon_sdk::letter::JSON));
    }
    if let Some(trace) = trace {
        let encoded = trace.encode();
        headers = headers.insert(Header { key: header::TRACEPARENT, value: Some(encoded.as_bytes()) });
    }
    if !has_spec {
        headers = headers.insert(text(header::SPECVERSION, pigeon_sdk::letter::SPEC_VERSION));
    }
    if !has_source {
        headers = headers.insert(text(header::SOURCE, message.topic()));
    }
    if !has_time {
        if let Some(ms) = message.timestamp().to_millis() {
            headers = headers.insert(text(header::TIME, &pigeon_sdk::letter::format_time_ms(ms)));
        }
    }
    headers
}

/// The most pigeons a letter may pass through: past it, the router parks the letter (pigeons
/// x→y and y→x, or a longer ring, would send it round for ever).
pub const MAX_HOPS: u32 = 16;

/// The hops a letter made: the most its `ce_hops` headers say (a second header saying 0 must
/// not hide a loop).
pub fn hops_in(input: &LetterHeaders<'_>) -> u32 {
    input.iter().filter(|h| h.is(header::HOPS)).map(|h| hops_of(h.text())).max().unwrap_or(0)
}

/// A `ce_hops` value: 0 when absent or not a number (a foreign producer's).
pub fn hops_of(value: Option<&str>) -> u32 {
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `n` in decimal, written into `buf` (no allocation on the forward path).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header { key, value: Some(value.as_bytes()) }
}

/// A refused record copied into a message, so it can be dead-lettered like a failed delivery.
fn owned(record: &OutputRecord<'_>) -> OwnedMessage {
    OwnedMessage::new(
        record.payload.map(<[u8]>::to_vec),
        record.key.map(<[u8]>::to_vec),
        record.topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        -1,
        -1,
        record.headers.clone(),
    )
}

/// One output letter, owned: what the retrier and the fly endpoint send.
#[derive(Debug)]
pub struct OwnedOutput {
    /// Destination topic.
    pub topic: String,
    /// Partition key.
    pub key: Option<Vec<u8>>,
    /// Headers, `ce_id` and `ce_type` included.
    pub headers: OwnedHeaders,
    /// Payload.
    pub payload: Option<Vec<u8>>,
    /// Why it must not be sent: it lacks a field its destination requires (a pigeon in
    /// `enforce` mode). The caller parks it ([`OwnedOutput::parked`]) for that destination
    /// alone, and sends the others.
    pub unfit: Option<Unfit>,
}

/// An output its pigeon holds back: what it lacks, and which pigeon (id, version) said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    /// What the destination requires that the output lacks.
    pub reason: String,
    /// The pigeon's id and version.
    pub pigeon: (String, i64),
    /// The topic the letter came from.
    pub source_topic: String,
}

impl OwnedOutput {
    /// A planned output of `message` for `route`, owned, with `ce_attempt` set to `attempt`.
    pub fn planned(
        message: &OwnedMessage,
        input: &LetterHeaders<'_>,
        output: Output<'_>,
        route: &Route,
        attempt: i32,
        trace: Option<&TraceParent>,
    ) -> Self {
        let headers =
            output_headers(message, input, &output.id, &output.tag, &route.id, output.rewritten, trace);
        Self {
            topic: output.topic.to_owned(),
            key: output.key.map(std::borrow::Cow::into_owned),
            headers: with_attempt(&headers, attempt),
            payload: output.payload.map(std::borrow::Cow::into_owned),
            unfit: output.unfit.map(|reason| Unfit {
                reason,
                pigeon: (route.id.to_string(), route.version),
                source_topic: message.topic().to_owned(),
            }),
        }
    }

    /// An unfit output as the dead letter that keeps it: parked for an operator, who can fix
    /// the payload and redrive it to the same destination. `None` for an output that fits.
    pub fn parked(&self) -> Option<NewDeadLetter> {
        let unfit = self.unfit.as_ref()?;
        let pigeon = (unfit.pigeon.0.as_str(), unfit.pigeon.1);
        let mut dead = self.dead_letter(pigeon, ErrorKind::Dictionary, unfit.reason.clone(), None);
        dead.source_topic.clone_from(&unfit.source_topic);
        Some(dead)
    }

    /// The output as a dead letter for `pigeon` (id, version): `kind` and `error` say why.
    /// Retried on the pigeon's schedule from `first_retry`, or parked when that is `None`.
    pub fn dead_letter(
        &self,
        pigeon: (&str, i64),
        kind: ErrorKind,
        error: String,
        first_retry: Option<std::time::Duration>,
    ) -> NewDeadLetter {
        let message = OwnedMessage::new(
            self.payload.clone(),
            self.key.clone(),
            self.topic.clone(),
            rdkafka::Timestamp::NotAvailable,
            -1,
            -1,
            Some(self.headers.clone()),
        );
        dead_output(&message, pigeon, kind, error, first_retry)
    }

    /// The record that sends it.
    pub fn record(&self) -> rdkafka::producer::FutureRecord<'_, [u8], [u8]> {
        let mut record = rdkafka::producer::FutureRecord::to(&self.topic).headers(self.headers.clone());
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        record
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.raw().find(|h| h.is(name))?.value?;
        Some(String::from_utf8_lossy(value).into_owned())
    }
}

/// What the pigeons that took a letter read again make of it: the outputs, and a dead letter
/// for each pigeon that refused the letter (its alone: the others' outputs still go).
#[derive(Debug, Default)]
pub struct Planned {
    /// Every pigeon's outputs; an unfit one is marked ([`OwnedOutput::parked`]).
    pub outputs: Vec<OwnedOutput>,
    /// The letter, once for each pigeon that refused it.
    pub refused: Vec<NewDeadLetter>,
}

/// The `stage` span of a sampled letter: the pigeons that took it, where it was read.
pub(crate) fn route_span<M: Message>(
    stage: &'static str,
    sampled: telemetry::Sampled,
    routes: &[&Arc<Route>],
    message: &M,
    id: &str,
) -> Option<LetterSpan> {
    let pigeons = routes.iter().map(|r| &*r.id).collect::<Vec<_>>().join(",");
    let at = telemetry::At {
        pigeon: &pigeons,
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        letter_id: id,
    };
    LetterSpan::start(stage, sampled, at)
}

/// The outputs each of `routes` makes of a letter read again (a redriven dead letter, a
/// replayed or flown one), owned, with `ce_attempt` set to `attempt`: the [`plan`] the router
/// follows, pigeon by pigeon. `id`, `tag` and `time_ms` are the letter's. A sampled letter is
/// planned in a `stage` span, its outputs that span's children.
#[allow(clippy::too_many_arguments)]
pub fn owned_outputs(
    stage: &'static str,
    message: &OwnedMessage,
    id: &str,
    tag: &str,
    time_ms: i64,
    routes: &[&Arc<Route>],
    attempt: i32,
    contracts: &Contracts,
) -> Planned {
    let input = LetterHeaders::of(message);
    let span = telemetry::sampled(&input).and_then(|sampled| route_span(stage, sampled, routes, message, id));
    let trace = span.as_ref().map(|s| &s.traceparent);
    let letter = letter_ref(message, &input, id, tag, time_ms);
    let checked = plan::check(routes.iter().map(|r| r.as_ref()), contracts, letter.payload);
    let mut planned = Planned::default();
    for route in routes {
        // A panic in the plan (a bug not found yet) costs this pigeon the letter, parked as
        // `internal`, as on the router's path.
        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            plan::plan(route, &letter, checked.as_ref(), contracts)
        }))
        .unwrap_or_else(|panic| {
            let reason = format!(
                "planning the letter panicked (a bug in the bus): {}",
                fault::panic_text(panic.as_ref())
            );
            tracing::error!(pigeon = %route.id, letter = id, reason, "a plan panicked; the letter is parked");
            Err(Refusal { kind: ErrorKind::Internal, reason })
        });
        match judged {
            Ok(outputs) => planned.outputs.extend(
                outputs
                    .into_iter()
                    .map(|output| OwnedOutput::planned(message, &input, output, route, attempt, trace)),
            ),
            Err(refusal) => planned.refused.push(refused(message, id, route, refusal)),
        }
    }
    planned
}

/// The pigeons that take a letter read again (a redriven dead letter, a replayed one) as the
/// router would take it now: by its topic and tag, only those whose live window holds
/// `time_ms`, or the pigeon a flown letter names. Returns its tag too; the error says why no
/// pigeon takes it.
pub fn reroute(
    table: &crate::route::RouteTable,
    message: &OwnedMessage,
    time_ms: i64,
) -> Result<(String, Vec<Arc<crate::route::Route>>), String> {
    use crate::route::Lookup;
    let lookup = table.lookup(message.topic());
    let source = match &lookup {
        Lookup::Flown(source) => *source,
        Lookup::Routes(routes) => &routes.source,
        Lookup::Nothing => return Err(format!("no enabled pigeon listens on {} now", message.topic())),
    };
    let headers = LetterHeaders::of(message);
    let meta = crate::source::read(message, &headers, source)?;
    let tag = meta.tag.clone().unwrap_or_default().into_owned();
    let matched: Vec<Arc<crate::route::Route>> = match (&lookup, &meta.tag) {
        (Lookup::Routes(routes), Some(tag)) => {
            routes.matching(tag).filter(|r| r.takes(time_ms)).cloned().collect()
        }
        (Lookup::Routes(routes), None) => {
            routes.matching_untagged().filter(|r| r.takes(time_ms)).cloned().collect()
        }
        _ => vec![Arc::clone(table.flown(headers.text(header::PIGEON))?)],
    };
    if matched.is_empty() {
        return Err(format!("no pigeon matches tag {tag:?} on {} now", message.topic()));
    }
    Ok((tag, matched))
}

/// The headers with `ce_attempt` set to `attempt`.
pub fn with_attempt(headers: &OwnedHeaders, attempt: i32) -> OwnedHeaders {
    let attempt = attempt.to_string();
    let mut out = OwnedHeaders::new_with_capacity(headers.count() + 1);
    for h in headers.raw().filter(|h| !h.is(header::ATTEMPT)) {
        out = pigeon_headers::add(out, h.name, h.value);
    }
    out.insert(Header { key: header::ATTEMPT, value: Some(attempt.as_bytes()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn traced_message(traceparent: &[u8]) -> OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::ID, value: Some("id-1") })
            .insert(Header { key: header::TRACEPARENT, value: Some(traceparent) })
            .insert(Header { key: "x-other", value: Some("kept") });
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "t".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    fn traceparents(headers: &OwnedHeaders) -> Vec<Vec<u8>> {
        headers
            .raw()
            .filter(|h| h.is(header::TRACEPARENT))
            .filter_map(|h| h.value.map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn an_unsampled_letters_outputs_keep_its_traceparent_as_it_came() {
        for incoming in [INCOMING.as_bytes(), b"not a trace context", b"\xff\xfe"] {
            let m = traced_message(incoming);
            let input = LetterHeaders::of(&m);
            let out = output_headers(&m, &input, "out-1", "tag", "p", false, None);
            assert_eq!(traceparents(&out), vec![incoming.to_vec()]);
        }
    }

    #[test]
    fn a_sampled_letters_outputs_carry_the_span_that_sent_them_in_the_same_trace() {
        let m = traced_message(INCOMING.as_bytes());
        let input = LetterHeaders::of(&m);
        let parent = TraceParent::parse(INCOMING.as_bytes()).unwrap();
        let span = parent.child([9, 8, 7, 6, 5, 4, 3, 2]);
        let out = output_headers(&m, &input, "out-1", "tag", "p", false, Some(&span));
        assert_eq!(
            traceparents(&out),
            vec![b"00-0af7651916cd43dd8448eb211c80319c-0908070605040302-01".to_vec()]
        );
        assert!(out.raw().any(|h| h.is("x-other")), "the other headers are kept");
        let again = telemetry::with_traceparent(&out, &span);
        assert_eq!(traceparents(&again), traceparents(&out));
        assert_eq!(again.count(), out.count());
    }

    #[test]
    fn hops_count_up_in_decimal_and_anything_else_counts_as_none() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(16, &mut buf), b"16");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
        assert_eq!(hops_of(Some("7")), 7);
        assert_eq!(hops_of(Some("-1")), 0);
        assert_eq!(hops_of(Some("lots")), 0);
        assert_eq!(hops_of(None), 0);
    }
}
