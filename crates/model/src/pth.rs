//! PyTorch checkpoints: the zip format through candle, and the legacy (pre-1.6,
//! non-zip) format that `efficientnet-lite0-57934424.pth` uses, parsed with candle's
//! pickle reader: five pickles (magic, protocol, system info, the state dict, storage
//! keys) followed by each storage's raw bytes, prefixed by its element count.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Error, Result, Tensor};

const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// Every tensor of a checkpoint's state dict, by name.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 4];
    file.read_exact(&mut head)?;
    if &head == ZIP_MAGIC {
        return Ok(candle_core::pickle::read_all(path)?.into_iter().collect());
    }
    file.rewind()?;
    read_legacy(BufReader::new(file))
}

fn next_pickle<R: BufRead>(r: &mut R) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

/// The state dict inside an object: a dict, or an `OrderedDict(...)` being built.
fn find_dict(obj: Object) -> Option<Vec<(Object, Object)>> {
    match obj {
        Object::Dict(kv) => Some(kv),
        Object::Build { args, .. } => find_dict(*args),
        Object::Reduce { args, .. } => find_dict(*args),
        _ => None,
    }
}

/// The legacy format's first pickle: PROTO n, LONG1 10 <magic>, STOP. Read by hand
/// because candle's LONG1 decoder shifts past 64 bits on a 10-byte integer.
fn read_magic<R: Read>(r: &mut R) -> Result<()> {
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let mut buf = [0u8; 15];
    r.read_exact(&mut buf)?;
    if buf[0] != 0x80 || buf[2] != 0x8a || buf[3] != 10 || buf[4..14] != MAGIC || buf[14] != b'.' {
        return Err(Error::Msg("not a PyTorch checkpoint (neither zip nor legacy magic number)".into()));
    }
    Ok(())
}

fn read_legacy<R: BufRead>(mut r: R) -> Result<HashMap<String, Tensor>> {
    read_magic(&mut r)?;
    for _ in 0..2 {
        next_pickle(&mut r)?; // protocol version, system info
    }
    let dict = find_dict(next_pickle(&mut r)?).ok_or_else(|| Error::Msg("checkpoint holds no state dict".into()))?;
    let keys = match next_pickle(&mut r)? {
        Object::List(k) | Object::Tuple(k) => k,
        other => return Err(Error::Msg(format!("unexpected storage key list {other:?}"))),
    };
    let mut infos = Vec::new();
    for (name, value) in dict {
        if let Some(info) = value.into_tensor_info(name, Path::new(""))? {
            infos.push(info);
        }
    }
    // Storages follow in key order: u64 element count, then the raw little-endian data.
    let elem_size: HashMap<String, usize> =
        infos.iter().map(|i| (i.path.trim_start_matches('/').to_string(), i.dtype.size_in_bytes())).collect();
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let key = String::try_from(key).map_err(|o| Error::Msg(format!("bad storage key {o:?}")))?;
        let mut n = [0u8; 8];
        r.read_exact(&mut n)?;
        let count = u64::from_le_bytes(n) as usize;
        let size = elem_size.get(&key).copied().unwrap_or(4);
        let mut bytes = vec![0u8; count * size];
        r.read_exact(&mut bytes)?;
        storages.insert(key, bytes);
    }
    let mut out = HashMap::new();
    for info in infos {
        let key = info.path.trim_start_matches('/');
        let bytes = storages.get(key).ok_or_else(|| Error::Msg(format!("storage {key} of {} missing", info.name)))?;
        let storage =
            Tensor::from_raw_buffer(bytes, info.dtype, &[bytes.len() / info.dtype.size_in_bytes()], &Device::Cpu)?;
        let storage = storage.to_dtype(DType::F32)?;
        let layout = &info.layout;
        let start = layout.start_offset() / info.dtype.size_in_bytes();
        let shape = layout.shape().clone();
        let t = if layout.is_contiguous() {
            storage.narrow(0, start, shape.elem_count())?.reshape(&shape)?
        } else {
            // E.g. a classifier stored transposed by a TensorFlow conversion: gather by strides.
            let values = storage.to_vec1::<f32>()?;
            let dims = shape.dims();
            let stride = layout.stride();
            let mut gathered = Vec::with_capacity(shape.elem_count());
            let mut index = vec![0usize; dims.len()];
            for _ in 0..shape.elem_count() {
                let offset = start + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
                gathered.push(
                    *values
                        .get(offset)
                        .ok_or_else(|| Error::Msg(format!("tensor {} overruns its storage", info.name)))?,
                );
                for d in (0..dims.len()).rev() {
                    index[d] += 1;
                    if index[d] < dims[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            Tensor::from_vec(gathered, &shape, &Device::Cpu)?
        };
        out.insert(info.name, t);
    }
    Ok(out)
}
