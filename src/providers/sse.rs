//! Incremental `text/event-stream` parser following the WHATWG event-stream rules
//! (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
//!
//! Upstreams write events in whatever pieces TCP hands us, so the parser keeps the unfinished
//! line and the unfinished event between calls to [`SseParser::push`].

/// One dispatched event. `event` is `None` when no (non-empty) `event:` field was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the line not yet terminated. Kept as bytes so a UTF-8 character split across
    /// reads is only decoded once whole.
    line: Vec<u8>,
    /// The data buffer, each `data:` value followed by `\n` as the spec describes.
    data: String,
    event: String,
    /// The previous read ended with `\r`: a `\n` opening the next read belongs to it.
    skip_lf: bool,
    /// The byte-order mark may only be stripped from the very first line.
    first_line: bool,
    failed: bool,
}

impl SseParser {
    /// `max_event_bytes` bounds the event being assembled (its data plus the line in progress),
    /// so a hostile upstream cannot make us buffer without end.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            line: Vec::new(),
            data: String::new(),
            event: String::new(),
            skip_lf: false,
            first_line: true,
            failed: false,
        }
    }

    /// Feeds the next bytes of the stream; returns the events they complete, in order. After an
    /// error the parser stays failed: the stream cannot be resynchronised.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut events = Vec::new();
        let mut rest = bytes;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            self.check_size()?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut events);
            self.line = line;
            self.line.clear();
            let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
            self.skip_lf = rest[end] == b'\r' && end + 1 == rest.len();
            rest = &rest[end + if crlf { 2 } else { 1 }..];
        }
        self.line.extend_from_slice(rest);
        self.check_size()?;
        Ok(events)
    }

    fn check_size(&mut self) -> Result<(), String> {
        if self.line.len() + self.data.len() + self.event.len() <= self.max_event_bytes {
            return Ok(());
        }
        self.failed = true;
        // Free the memory now; the caller is expected to drop the stream anyway.
        self.line = Vec::new();
        self.data = String::new();
        self.event = String::new();
        Err(self.too_large())
    }

    fn too_large(&self) -> String {
        format!("SSE event larger than {} bytes", self.max_event_bytes)
    }

    fn process_line(&mut self, raw: &[u8], events: &mut Vec<SseEvent>) {
        let decoded = String::from_utf8_lossy(raw);
        let mut line: &str = &decoded;
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            // `id` and `retry` only matter to reconnecting clients; we never reconnect.
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        events.push(SseEvent { event: (!event.is_empty()).then_some(event), data });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_owned), data: data.to_owned() }
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new(1 << 20).push(input).unwrap()
    }

    const STREAM: &str = "event: message_start\r\ndata: {\"a\":\"é€😀\"}\r\n\r\n\
        : OPENROUTER PROCESSING\n\n\
        data: line one\ndata:line two\r\rdata: x\n\
        id: 7\nretry: 100\nbogus: field\nevent: last\n\n\
        data: no terminator yet";

    #[test]
    fn every_split_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        let whole = parse_all(bytes);
        assert_eq!(
            whole,
            vec![
                ev(Some("message_start"), "{\"a\":\"é€😀\"}"),
                ev(None, "line one\nline two"),
                ev(Some("last"), "x"),
            ]
        );
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut p = SseParser::new(1 << 20);
                let mut got = p.push(&bytes[..i]).unwrap();
                got.extend(p.push(&bytes[i..j]).unwrap());
                got.extend(p.push(&bytes[j..]).unwrap());
                assert_eq!(got, whole, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut p = SseParser::new(1 << 20);
        let mut got = Vec::new();
        for b in STREAM.as_bytes() {
            got.extend(p.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, parse_all(STREAM.as_bytes()));
    }

    #[test]
    fn comments_and_keep_alives_are_ignored() {
        let got = parse_all(b": OPENROUTER PROCESSING\n\n: ping\n:\ndata: {}\n\n");
        assert_eq!(got, vec![ev(None, "{}")]);
        assert_eq!(parse_all(b": OPENROUTER PROCESSING\n\n"), vec![]);
    }

    #[test]
    fn line_endings() {
        let expected = vec![ev(Some("e"), "a\nb")];
        assert_eq!(parse_all(b"event: e\r\ndata: a\r\ndata: b\r\n\r\n"), expected);
        assert_eq!(parse_all(b"event: e\rdata: a\rdata: b\r\r"), expected);
        assert_eq!(parse_all(b"event: e\ndata: a\ndata: b\n\n"), expected);
        assert_eq!(parse_all(b"event: e\r\ndata: a\rdata: b\n\r\n"), expected);
        // `\r` at the end of one read and `\n` at the start of the next are one terminator.
        let mut p = SseParser::new(100);
        assert_eq!(p.push(b"data: a\r").unwrap(), vec![]);
        assert_eq!(p.push(b"\n").unwrap(), vec![]);
        assert_eq!(p.push(b"\r").unwrap(), vec![ev(None, "a")]);
        assert_eq!(p.push(b"\n\n").unwrap(), vec![]);
    }

    #[test]
    fn field_parsing() {
        // Only one leading space is stripped; a line without a colon is a field with empty value.
        assert_eq!(parse_all(b"data:  two\n\n"), vec![ev(None, " two")]);
        assert_eq!(parse_all(b"data\n\n"), vec![ev(None, "")]);
        assert_eq!(parse_all(b"data:\ndata:\n\n"), vec![ev(None, "\n")]);
        assert_eq!(parse_all(b"data: a:b: c\n\n"), vec![ev(None, "a:b: c")]);
        assert_eq!(parse_all(b"Data: x\nDATA: y\n\n"), vec![]);
        // No data: nothing dispatched, and the event name does not leak into the next event.
        assert_eq!(parse_all(b"event: ping\n\ndata: d\n\n"), vec![ev(None, "d")]);
        assert_eq!(parse_all(b"event:\ndata: d\n\n"), vec![ev(None, "d")]);
        // An unfinished event at the end of the stream is never dispatched.
        assert_eq!(parse_all(b"data: d\n"), vec![]);
    }

    #[test]
    fn bom_and_invalid_utf8() {
        assert_eq!(parse_all(b"\xEF\xBB\xBFdata: a\n\n"), vec![ev(None, "a")]);
        let mut p = SseParser::new(100);
        assert_eq!(p.push(b"\xEF\xBB").unwrap(), vec![]);
        assert_eq!(p.push(b"\xBFdata: a\n\n").unwrap(), vec![ev(None, "a")]);
        // Only at the very start of the stream.
        assert_eq!(parse_all(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"), vec![ev(None, "a")]);
        assert_eq!(parse_all(b"data: \xFF\n\n"), vec![ev(None, "\u{fffd}")]);
    }

    #[test]
    fn limit() {
        let mut p = SseParser::new(16);
        assert_eq!(p.push(b"data: 0123456789\n\n").unwrap(), vec![ev(None, "0123456789")]);
        // Many data lines that never end the event.
        let mut p = SseParser::new(16);
        assert_eq!(p.push(b"data: 0123\n").unwrap(), vec![]);
        assert_eq!(p.push(b"data: 4567\n").unwrap(), vec![]);
        assert!(p.push(b"data: 89ab\n").is_err());
        assert!(p.push(b"\n").is_err(), "stays failed");
        // One endless line, whether it arrives in one read or many.
        assert!(SseParser::new(16).push(&[b'x'; 17]).is_err());
        let mut p = SseParser::new(16);
        for _ in 0..8 {
            assert_eq!(p.push(b"::").unwrap(), vec![]);
        }
        assert!(p.push(b"x").is_err());
        // The outcome does not depend on where the reads are split.
        let input = b"data: 0123456789\ndata: abcdef\n\n";
        for i in 0..=input.len() {
            let mut p = SseParser::new(16);
            let r = p.push(&input[..i]).and_then(|_| p.push(&input[i..]));
            assert!(r.is_err(), "split at {i}");
        }
        // Dispatched events do not count against the next one.
        let mut p = SseParser::new(16);
        for _ in 0..100 {
            assert_eq!(p.push(b"data: 0123456789\n\n").unwrap().len(), 1);
        }
    }
}
