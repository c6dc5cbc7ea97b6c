//! The protobuf codec of Vitrine's services: prost's, except that a message
//! that does not decode is INVALID_ARGUMENT (the sender's mistake, which
//! retrying cannot fix) rather than prost's INTERNAL, which would read as a
//! server fault and page whoever watches INTERNAL errors.

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode errors mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct VitrineCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for VitrineCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = VitrineDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        VitrineDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] with decode errors mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct VitrineDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for VitrineDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!("malformed protobuf message: {}", status.message())),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
