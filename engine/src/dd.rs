//! The AV1 RTP dependency descriptor (the header extension of the AV1 RTP specification,
//! appendix A): which spatial and temporal layer a frame belongs to, and whether a receiver
//! may start decoding a layer at it.
//!
//! Chromium sends it (when negotiated) with every AV1 frame, for SVC modes such as
//! `L3T3_KEY` too; an SFU needs it to drop layers per subscriber, as the AV1 payload itself
//! names no layers in a way that survives packetization. The layout of the layers (the
//! "template dependency structure") comes only with keyframes; later descriptors name a
//! template of it by id, so a reader keeps the last structure per stream ([`DdReader`]).
//!
//! Only what forwarding needs is kept: each template's spatial and temporal ids and decode
//! target indications, the decode targets' layers, and the render resolutions. Frame
//! dependencies and chains are read past (checked, not kept).
//!
//! Never panics on any input (property-tested below).

/// Most templates a structure may define (the template id has 6 bits).
const MAX_TEMPLATES: usize = 64;
/// Most decode targets (5 bits, plus one).
const MAX_DECODE_TARGETS: usize = 32;
/// Spatial and temporal ids a structure may use (the AV1 OBU extension's fields: 2 and 3
/// bits).
const MAX_SPATIAL_ID: u8 = 3;
const MAX_TEMPORAL_ID: u8 = 7;

/// Decode target indication (table A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dti {
    /// The frame is not part of the decode target.
    NotPresent,
    /// Part of it, but no later frame of the target depends on it.
    Discardable,
    /// A switching point: a decoder that has the target's lower layers may start here.
    Switch,
    /// Part of it, and needed by later frames.
    Required,
}

impl Dti {
    fn from_bits(v: u64) -> Dti {
        match v & 3 {
            0 => Dti::NotPresent,
            1 => Dti::Discardable,
            2 => Dti::Switch,
            _ => Dti::Required,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Template {
    spatial: u8,
    temporal: u8,
    /// Two bits per decode target, target 0 in the lowest bits.
    dtis: u64,
}

/// A template dependency structure (what a keyframe's descriptor attaches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdStructure {
    template_id_offset: u8,
    decode_targets: u8,
    chains: u8,
    templates: Vec<Template>,
    /// Each decode target's highest (spatial, temporal) layer.
    target_layers: Vec<(u8, u8)>,
    /// Render width and height per spatial id, if the sender gave them.
    resolutions: Vec<(u16, u16)>,
}

impl DdStructure {
    /// Spatial layers (the highest spatial id plus one).
    pub fn spatial_layers(&self) -> u8 {
        self.templates.iter().map(|t| t.spatial).max().unwrap_or(0) + 1
    }

    /// The render size of each spatial layer, smallest first (empty if not given).
    pub fn resolutions(&self) -> &[(u16, u16)] {
        &self.resolutions
    }

    /// The decode target whose highest layers are exactly (`spatial`, `temporal`).
    fn target_of(&self, spatial: u8, temporal: u8) -> Option<usize> {
        self.target_layers
            .iter()
            .position(|&l| l == (spatial, temporal))
    }
}

/// One frame's descriptor, read against its stream's structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdFrame {
    /// The first packet of the frame.
    pub start: bool,
    /// The last packet of the frame.
    pub end: bool,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    /// The frame is a switching point of the decode target of its own spatial and temporal
    /// layer: with the layers below received, a decoder may start that layer here.
    pub switch_up: bool,
    /// This descriptor carried a new structure (a keyframe's first packet).
    pub new_structure: bool,
}

/// Why a descriptor could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DdError {
    #[error("dependency descriptor truncated")]
    Truncated,
    #[error("dependency descriptor out of range")]
    Invalid,
    /// A descriptor without a structure, and none was received before (or its template id
    /// is not in the one received).
    #[error("dependency descriptor names an unknown template")]
    UnknownTemplate,
}

/// Reads one stream's descriptors, keeping the last structure received.
#[derive(Clone, Debug, Default)]
pub struct DdReader {
    structure: Option<DdStructure>,
    /// The newest frame number read (None before the first).
    newest: Option<u16>,
}

impl DdReader {
    pub fn structure(&self) -> Option<&DdStructure> {
        self.structure.as_ref()
    }

    /// Reads the descriptor `data` (the extension element's bytes). A structure it carries
    /// replaces the one kept, unless its frame is older than the newest frame read (a late
    /// or retransmitted keyframe packet: the sender may have moved its template ids on
    /// since). Malformed input is an error and changes nothing.
    pub fn read(&mut self, data: &[u8]) -> Result<DdFrame, DdError> {
        let (frame, structure) = parse(data, self.structure.as_ref())?;
        // Frame numbers wrap at 16 bits: "not older" is within half the range ahead.
        let current = self
            .newest
            .is_none_or(|n| frame.frame_number.wrapping_sub(n) < 0x8000);
        if current {
            self.newest = Some(frame.frame_number);
            if let Some(s) = structure {
                self.structure = Some(s);
            }
        }
        Ok(frame)
    }
}

struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<bool, DdError> {
        let byte = self.data.get(self.at / 8).ok_or(DdError::Truncated)?;
        let v = byte >> (7 - self.at % 8) & 1;
        self.at += 1;
        Ok(v == 1)
    }

    /// `f(n)`: n bits, most significant first (n <= 32).
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | u32::from(self.bit()?);
        }
        Ok(v)
    }

    /// `ns(n)`: a non-symmetric unsigned value below n.
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        if n <= 1 {
            return Ok(0);
        }
        let w = 32 - n.leading_zeros();
        let m = (1u32 << w) - n;
        let v = self.f(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = u32::from(self.bit()?);
        Ok((v << 1) - m + extra)
    }
}

/// Parses a descriptor; `known` is the stream's structure so far. Returns the frame and the
/// structure the descriptor attached, if any.
fn parse(
    data: &[u8],
    known: Option<&DdStructure>,
) -> Result<(DdFrame, Option<DdStructure>), DdError> {
    if data.len() < 3 {
        return Err(DdError::Truncated);
    }
    let mut b = Bits { data, at: 0 };
    let start = b.bit()?;
    let end = b.bit()?;
    let template_id = b.f(6)? as u8;
    let frame_number = b.f(16)? as u16;
    let (mut custom_dtis, mut custom_fdiffs, mut custom_chains) = (false, false, false);
    let mut attached = None;
    if data.len() > 3 {
        let structure_present = b.bit()?;
        let active_targets_present = b.bit()?;
        custom_dtis = b.bit()?;
        custom_fdiffs = b.bit()?;
        custom_chains = b.bit()?;
        if structure_present {
            attached = Some(parse_structure(&mut b)?);
        }
        if active_targets_present {
            let targets = attached
                .as_ref()
                .or(known)
                .ok_or(DdError::UnknownTemplate)?;
            b.f(u32::from(targets.decode_targets))?;
        }
    }
    let structure = attached
        .as_ref()
        .or(known)
        .ok_or(DdError::UnknownTemplate)?;
    let index = (usize::from(template_id) + MAX_TEMPLATES
        - usize::from(structure.template_id_offset))
        % MAX_TEMPLATES;
    let template = *structure
        .templates
        .get(index)
        .ok_or(DdError::UnknownTemplate)?;
    let mut dtis = template.dtis;
    if custom_dtis {
        dtis = 0;
        for dt in 0..structure.decode_targets {
            dtis |= u64::from(b.f(2)?) << (2 * u32::from(dt));
        }
    }
    if custom_fdiffs {
        loop {
            let size = b.f(2)?;
            if size == 0 {
                break;
            }
            b.f(4 * size)?;
        }
    }
    if custom_chains {
        for _ in 0..structure.chains {
            b.f(8)?;
        }
    }
    let switch_up = structure
        .target_of(template.spatial, template.temporal)
        .is_some_and(|dt| Dti::from_bits(dtis >> (2 * dt)) == Dti::Switch);
    let frame = DdFrame {
        start,
        end,
        frame_number,
        spatial: template.spatial,
        temporal: template.temporal,
        switch_up,
        new_structure: attached.is_some(),
    };
    Ok((frame, attached))
}

fn parse_structure(b: &mut Bits<'_>) -> Result<DdStructure, DdError> {
    let template_id_offset = b.f(6)? as u8;
    let decode_targets = b.f(5)? as u8 + 1;
    // template_layers(): each next template's layer relative to the one before.
    let mut templates = Vec::new();
    let (mut spatial, mut temporal) = (0u8, 0u8);
    loop {
        if templates.len() >= MAX_TEMPLATES {
            return Err(DdError::Invalid);
        }
        templates.push(Template {
            spatial,
            temporal,
            dtis: 0,
        });
        match b.f(2)? {
            0 => {}
            1 => temporal += 1,
            2 => {
                temporal = 0;
                spatial += 1;
            }
            _ => break,
        }
        if spatial > MAX_SPATIAL_ID || temporal > MAX_TEMPORAL_ID {
            return Err(DdError::Invalid);
        }
    }
    for t in &mut templates {
        for dt in 0..decode_targets {
            t.dtis |= u64::from(b.f(2)?) << (2 * u32::from(dt));
        }
    }
    // template_fdiffs(): read past.
    for _ in 0..templates.len() {
        while b.bit()? {
            b.f(4)?;
        }
    }
    // template_chains(): read past, but the count is needed for frames' custom chains.
    let chains = b.ns(u32::from(decode_targets) + 1)? as u8;
    if chains > 0 {
        for _ in 0..decode_targets {
            b.ns(u32::from(chains))?;
        }
        for _ in 0..templates.len() {
            for _ in 0..chains {
                b.f(4)?;
            }
        }
    }
    // decode_target_layers(): derived, not sent.
    let target_layers = (0..decode_targets)
        .map(|dt| {
            templates
                .iter()
                .filter(|t| Dti::from_bits(t.dtis >> (2 * u32::from(dt))) != Dti::NotPresent)
                .fold((0, 0), |(s, t), tpl| {
                    (s.max(tpl.spatial), t.max(tpl.temporal))
                })
        })
        .collect();
    let mut resolutions = Vec::new();
    if b.bit()? {
        for _ in 0..=spatial {
            let width = b.f(16)? as u16;
            let height = b.f(16)? as u16;
            resolutions.push((width.saturating_add(1), height.saturating_add(1)));
        }
    }
    debug_assert!(usize::from(decode_targets) <= MAX_DECODE_TARGETS);
    Ok(DdStructure {
        template_id_offset,
        decode_targets,
        chains,
        templates,
        target_layers,
        resolutions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits most significant first, for building descriptors in tests.
    #[derive(Default)]
    struct Writer {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl Writer {
        fn f(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                if v >> i & 1 == 1 {
                    let last = self.bytes.len() - 1;
                    self.bytes[last] |= 1 << (7 - self.bits % 8);
                }
                self.bits += 1;
            }
            self
        }

        fn ns(&mut self, n: u32, v: u32) -> &mut Self {
            let w = 32 - n.leading_zeros();
            let m = (1u32 << w) - n;
            if v < m {
                self.f(w - 1, v)
            } else {
                let x = v + m;
                self.f(w - 1, x >> 1).f(1, x & 1)
            }
        }
    }

    /// libwebrtc's `L2T2_KEY`-like layout: templates S0T0, S0T1, S1T0, S1T1; four decode
    /// targets (S0T0, S0T1, S1T0, S1T1).
    const L2T2: [(u8, u8, [u32; 4]); 4] = [
        // (spatial, temporal, DTIs per decode target): 0 -, 1 D, 2 S, 3 R
        (0, 0, [2, 2, 2, 2]),
        (0, 1, [0, 2, 0, 0]),
        (1, 0, [0, 0, 2, 2]),
        (1, 1, [0, 0, 0, 3]),
    ];

    fn keyframe_descriptor(offset: u32, template_id: u32, frame: u32) -> Vec<u8> {
        let mut w = Writer::default();
        w.f(1, 1).f(1, 0).f(6, template_id).f(16, frame);
        // structure present, no active targets, no custom fields
        w.f(1, 1).f(1, 0).f(1, 0).f(1, 0).f(1, 0);
        w.f(6, offset).f(5, 3);
        // layers: S0T0 -> same spatial next temporal -> next spatial -> next temporal -> end
        w.f(2, 1).f(2, 2).f(2, 1).f(2, 3);
        for (_, _, dtis) in L2T2 {
            for d in dtis {
                w.f(2, d);
            }
        }
        // fdiffs: none for the first, one (1) for the others
        w.f(1, 0);
        for _ in 1..4 {
            w.f(1, 1).f(4, 0).f(1, 0);
        }
        // two chains, decode targets protected by 0, 0, 1, 1
        w.ns(5, 2);
        for c in [0, 0, 1, 1] {
            w.ns(2, c);
        }
        for _ in 0..4 {
            w.f(4, 1).f(4, 1);
        }
        // resolutions: 320x180, 640x360
        w.f(1, 1).f(16, 319).f(16, 179).f(16, 639).f(16, 359);
        w.bytes
    }

    fn frame_descriptor(template_id: u32, frame: u32, start: bool, end: bool) -> Vec<u8> {
        let mut w = Writer::default();
        w.f(1, u32::from(start))
            .f(1, u32::from(end))
            .f(6, template_id)
            .f(16, frame);
        w.bytes
    }

    #[test]
    fn reads_a_keyframe_structure_and_the_frames_that_follow() {
        let mut r = DdReader::default();
        // Template ids start at offset 10.
        let key = r.read(&keyframe_descriptor(10, 10, 100)).unwrap();
        assert_eq!(
            key,
            DdFrame {
                start: true,
                end: false,
                frame_number: 100,
                spatial: 0,
                temporal: 0,
                switch_up: true,
                new_structure: true,
            }
        );
        let s = r.structure().unwrap();
        assert_eq!(s.spatial_layers(), 2);
        assert_eq!(s.resolutions(), &[(320, 180), (640, 360)]);
        assert_eq!(s.target_layers, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(s.chains, 2);
        // Template 11: S0T1, a switch point of its decode target (S0T1).
        let f = r.read(&frame_descriptor(11, 101, true, true)).unwrap();
        assert_eq!((f.spatial, f.temporal, f.switch_up), (0, 1, true));
        // Template 13: S1T1, only Required for S1T1: not a switching point.
        let f = r.read(&frame_descriptor(13, 102, false, true)).unwrap();
        assert_eq!((f.spatial, f.temporal, f.switch_up), (1, 1, false));
        assert_eq!(f.frame_number, 102);
        assert!(!f.start && f.end);
        // Template 14 is not in the structure (four templates from 10).
        assert_eq!(
            r.read(&frame_descriptor(14, 103, true, true)),
            Err(DdError::UnknownTemplate)
        );
    }

    #[test]
    fn a_late_structure_does_not_replace_a_newer_one() {
        let mut r = DdReader::default();
        r.read(&keyframe_descriptor(20, 20, 500)).unwrap();
        // A retransmitted packet of the previous keyframe (frame 400, offset 0) arrives
        // late: read against its own structure, not kept.
        let late = r.read(&keyframe_descriptor(0, 0, 400)).unwrap();
        assert!(late.new_structure);
        let f = r.read(&frame_descriptor(23, 501, true, true)).unwrap();
        assert_eq!((f.spatial, f.temporal), (1, 1));
        // A newer keyframe's structure (across the 16-bit wrap) is taken.
        let mut r = DdReader::default();
        r.read(&keyframe_descriptor(20, 20, 65_530)).unwrap();
        r.read(&keyframe_descriptor(40, 40, 3)).unwrap();
        assert_eq!(
            r.read(&frame_descriptor(23, 4, true, true)),
            Err(DdError::UnknownTemplate)
        );
        assert!(r.read(&frame_descriptor(43, 4, true, true)).is_ok());
        // Long after the last structure (more than half the frame-number range: minutes of
        // frames), a new keyframe's structure is still taken.
        let mut r = DdReader::default();
        r.read(&keyframe_descriptor(0, 0, 10)).unwrap();
        let mut n = 10u16;
        for _ in 0..70_000u32 {
            n = n.wrapping_add(1);
            r.read(&frame_descriptor(1, u32::from(n), true, true))
                .unwrap();
        }
        r.read(&keyframe_descriptor(30, 30, u32::from(n.wrapping_add(1))))
            .unwrap();
        assert!(
            r.read(&frame_descriptor(
                33,
                u32::from(n.wrapping_add(2)),
                true,
                true
            ))
            .is_ok()
        );
    }

    #[test]
    fn template_ids_wrap_around_the_offset() {
        let mut r = DdReader::default();
        r.read(&keyframe_descriptor(62, 62, 1)).unwrap();
        // 62, 63, 0, 1 are the four templates: 1 is S1T1.
        let f = r.read(&frame_descriptor(1, 2, true, true)).unwrap();
        assert_eq!((f.spatial, f.temporal), (1, 1));
    }

    #[test]
    fn custom_dtis_override_the_template() {
        let mut r = DdReader::default();
        r.read(&keyframe_descriptor(0, 0, 1)).unwrap();
        // Template 3 (S1T1) with custom DTIs making it a switch point of S1T1, plus custom
        // fdiffs (one of 8 bits) and chains (two bytes).
        let mut w = Writer::default();
        w.f(1, 1).f(1, 1).f(6, 3).f(16, 2);
        w.f(1, 0).f(1, 0).f(1, 1).f(1, 1).f(1, 1);
        for d in [0, 0, 0, 2] {
            w.f(2, d);
        }
        w.f(2, 2).f(8, 5).f(2, 0);
        w.f(8, 1).f(8, 2);
        let f = r.read(&w.bytes).unwrap();
        assert_eq!((f.spatial, f.temporal, f.switch_up), (1, 1, true));
        // Cut short: an error, and the structure is kept.
        assert_eq!(r.read(&w.bytes[..5]), Err(DdError::Truncated));
        assert!(r.structure().is_some());
    }

    #[test]
    fn without_a_structure_nothing_can_be_read() {
        let mut r = DdReader::default();
        assert_eq!(
            r.read(&frame_descriptor(0, 1, true, true)),
            Err(DdError::UnknownTemplate)
        );
        assert_eq!(r.read(&[0x80, 0]), Err(DdError::Truncated));
    }

    #[test]
    fn ns_round_trips() {
        for n in 1..40u32 {
            for v in 0..n {
                let mut w = Writer::default();
                w.ns(n, v).f(8, 0xa5);
                let mut b = Bits {
                    data: &w.bytes,
                    at: 0,
                };
                assert_eq!(
                    b.ns(n).unwrap(),
                    if n == 1 { 0 } else { v },
                    "ns({n}) of {v}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_safe(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), with_structure in proptest::prelude::any::<bool>()) {
            let mut r = DdReader::default();
            if with_structure {
                r.read(&keyframe_descriptor(0, 0, 1)).unwrap();
            }
            let _ = r.read(&data);
            // A structure read from random bytes is internally consistent.
            if let Some(s) = r.structure() {
                proptest::prop_assert!(s.templates.len() <= MAX_TEMPLATES);
                proptest::prop_assert!(s.spatial_layers() <= MAX_SPATIAL_ID + 1);
                proptest::prop_assert_eq!(s.target_layers.len(), usize::from(s.decode_targets));
            }
        }
    }
}
