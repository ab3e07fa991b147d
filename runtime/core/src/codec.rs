//! Payload codecs: how user values (workflow inputs and outputs, activity arguments and
//! results) become the bytes stored inside events.
//!
//! The runtime itself never looks inside a payload; it only stores the bytes together
//! with the id of the codec that wrote them, so an auditor knows how to read them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bytes of one user value, tagged with the codec that produced them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The [`Codec::id`] of the codec that wrote `data`.
    pub codec: u8,
    /// The encoded value.
    pub data: Vec<u8>,
}

impl Payload {
    /// A payload holding `data` written by the codec with id `codec`.
    pub fn new(codec: u8, data: Vec<u8>) -> Self {
        Self { codec, data }
    }

    /// The payload as UTF-8 text when it is (JSON payloads always are), for messages.
    pub fn preview(&self, max_chars: usize) -> String {
        match std::str::from_utf8(&self.data) {
            Ok(text) if text.chars().count() > max_chars => {
                let cut: String = text.chars().take(max_chars).collect();
                format!("{cut}...")
            }
            Ok(text) => text.to_owned(),
            Err(_) => format!("<{} bytes, codec {}>", self.data.len(), self.codec),
        }
    }
}

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be written by the codec.
    #[error("cannot encode value with the {codec} codec: {message}")]
    Encode {
        /// Codec name.
        codec: &'static str,
        /// What the codec reported.
        message: String,
    },
    /// The bytes do not decode into the requested type.
    #[error("cannot decode payload as `{type_name}` with the {codec} codec: {message}")]
    Decode {
        /// Codec name.
        codec: &'static str,
        /// The Rust type that was asked for.
        type_name: &'static str,
        /// What the codec reported.
        message: String,
    },
    /// The payload was written by another codec than the one configured.
    #[error("payload was written by codec id {found}, but this runtime uses {codec} (id {expected}); configure the codec that wrote the history")]
    WrongCodec {
        /// Codec name configured.
        codec: &'static str,
        /// Its id.
        expected: u8,
        /// Id found in the payload.
        found: u8,
    },
}

/// Receives an erased deserializer from a [`Codec`] and builds a value from it.
pub type DecodeSink<'a> =
    dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error> + 'a;

/// Turns user values into payload bytes and back.
///
/// The trait is object safe (the runtime holds an `Arc<dyn Codec>`), so values cross it
/// as [`erased_serde`] trait objects; use [`encode`] and [`decode`] for typed access.
///
/// # Example
/// ```
/// use cairn_core::codec::{decode, encode, JsonCodec};
/// let codec = JsonCodec;
/// let payload = encode(&codec, &vec![1u32, 2, 3]).unwrap();
/// assert_eq!(payload.data, b"[1,2,3]");
/// let back: Vec<u32> = decode(&codec, &payload).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub trait Codec: Send + Sync + 'static {
    /// Stable id written into every payload (0 is JSON). Never reuse an id for another format.
    fn id(&self) -> u8;
    /// Human name for messages.
    fn name(&self) -> &'static str;
    /// Encodes one value.
    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError>;
    /// Decodes `bytes`, handing an erased deserializer to `sink`.
    fn decode_erased(
        &self,
        bytes: &[u8],
        type_name: &'static str,
        sink: &mut DecodeSink<'_>,
    ) -> Result<(), CodecError>;
}

/// The default codec: JSON via `serde_json`, readable by auditors without Cairn's code and
/// tolerant of fields added across deploys.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn id(&self) -> u8 {
        0
    }

    fn name(&self) -> &'static str {
        "json"
    }

    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(64);
        let mut serializer = serde_json::Serializer::new(&mut out);
        Serialize::serialize(value, &mut serializer).map_err(|err| CodecError::Encode {
            codec: "json",
            message: err.to_string(),
        })?;
        Ok(out)
    }

    fn decode_erased(
        &self,
        bytes: &[u8],
        type_name: &'static str,
        sink: &mut DecodeSink<'_>,
    ) -> Result<(), CodecError> {
        let fail = |message: String| CodecError::Decode {
            codec: "json",
            type_name,
            message,
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        {
            let mut erased = <dyn erased_serde::Deserializer>::erase(&mut deserializer);
            sink(&mut erased).map_err(|err| fail(err.to_string()))?;
        }
        deserializer.end().map_err(|err| fail(err.to_string()))
    }
}

/// Encodes `value` with `codec`.
///
/// # Errors
/// [`CodecError::Encode`] when the value's `Serialize` impl fails (a map with non-string
/// keys in JSON, for example).
pub fn encode<T: Serialize + ?Sized>(codec: &dyn Codec, value: &T) -> Result<Payload, CodecError> {
    let data = codec.encode_erased(&value as &dyn erased_serde::Serialize)?;
    Ok(Payload::new(codec.id(), data))
}

/// Decodes `payload` into a `T` with `codec`.
///
/// # Errors
/// [`CodecError::WrongCodec`] when another codec wrote the payload, [`CodecError::Decode`]
/// when the bytes are not a `T` (a field renamed or retyped since the history was written).
pub fn decode<T: DeserializeOwned>(codec: &dyn Codec, payload: &Payload) -> Result<T, CodecError> {
    if payload.codec != codec.id() {
        return Err(CodecError::WrongCodec {
            codec: codec.name(),
            expected: codec.id(),
            found: payload.codec,
        });
    }
    let mut out: Option<T> = None;
    codec.decode_erased(&payload.data, std::any::type_name::<T>(), &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| CodecError::Decode {
        codec: codec.name(),
        type_name: std::any::type_name::<T>(),
        message: "decoder produced no value".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u32,
        sku: String,
    }

    #[test]
    fn json_round_trip_and_readable_bytes() {
        let order = Order {
            id: 7,
            sku: "A-1".into(),
        };
        let payload = encode(&JsonCodec, &order).unwrap();
        assert_eq!(payload.data, br#"{"id":7,"sku":"A-1"}"#);
        assert_eq!(decode::<Order>(&JsonCodec, &payload).unwrap(), order);
    }

    #[test]
    fn decode_names_the_type_on_mismatch() {
        let payload = Payload::new(0, br#"{"id":"seven"}"#.to_vec());
        let err = decode::<Order>(&JsonCodec, &payload)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Order"), "{err}");
        let trailing = Payload::new(0, br#"{"id":1,"sku":"x"} junk"#.to_vec());
        assert!(decode::<Order>(&JsonCodec, &trailing).is_err());
    }

    #[test]
    fn foreign_codec_is_refused() {
        let payload = Payload::new(9, b"1".to_vec());
        assert!(matches!(
            decode::<u32>(&JsonCodec, &payload),
            Err(CodecError::WrongCodec { found: 9, .. })
        ));
    }
}
