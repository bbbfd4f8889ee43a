//! AES-CBC decryption of encrypted pushes (Kuaishou, WeChat safe mode), with the key size
//! (128, 192 or 256 bits) taken from the key.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, KeyIvInit};

/// How the plaintext was padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Padding {
    /// PKCS#5/#7 to the AES block (16 bytes).
    Pkcs7,
    /// PKCS#7 to a 32-byte block, as WeChat pads.
    Pkcs7Block32,
}

/// Why a ciphertext could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecryptError {
    #[error("key must be 16, 24 or 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("ciphertext is not a whole number of AES blocks")]
    Length,
    #[error("padding is wrong (wrong key?)")]
    Padding,
}

/// Decrypts `ciphertext` with `key` and `iv` (16 bytes).
pub(crate) fn aes_cbc_decrypt(
    key: &[u8],
    iv: &[u8; 16],
    ciphertext: &[u8],
    padding: Padding,
) -> Result<Vec<u8>, DecryptError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(DecryptError::Length);
    }
    let plain = match key.len() {
        16 => decrypt::<aes::Aes128>(key, iv, ciphertext),
        24 => decrypt::<aes::Aes192>(key, iv, ciphertext),
        32 => decrypt::<aes::Aes256>(key, iv, ciphertext),
        other => return Err(DecryptError::KeyLength(other)),
    };
    unpad(plain, padding)
}

fn decrypt<C>(key: &[u8], iv: &[u8; 16], ciphertext: &[u8]) -> Vec<u8>
where
    C: aes::cipher::BlockDecrypt + aes::cipher::BlockCipher + aes::cipher::KeyInit,
    cbc::Decryptor<C>: KeyIvInit + BlockDecryptMut,
{
    let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv).expect("lengths checked");
    decryptor
        .decrypt_padded_vec_mut::<NoPadding>(ciphertext)
        .expect("whole blocks checked")
}

/// Strips PKCS#7 padding to `padding`'s block, checking every pad byte.
fn unpad(mut plain: Vec<u8>, padding: Padding) -> Result<Vec<u8>, DecryptError> {
    let block = match padding {
        Padding::Pkcs7 => 16,
        Padding::Pkcs7Block32 => 32,
    };
    let pad = *plain.last().ok_or(DecryptError::Padding)? as usize;
    if pad == 0 || pad > block || pad > plain.len() {
        return Err(DecryptError::Padding);
    }
    if plain[plain.len() - pad..]
        .iter()
        .any(|b| *b as usize != pad)
    {
        return Err(DecryptError::Padding);
    }
    plain.truncate(plain.len() - pad);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_keys_lengths_and_padding() {
        let iv = [0u8; 16];
        assert_eq!(
            aes_cbc_decrypt(&[0; 10], &iv, &[0; 16], Padding::Pkcs7),
            Err(DecryptError::KeyLength(10))
        );
        assert_eq!(
            aes_cbc_decrypt(&[0; 16], &iv, &[0; 15], Padding::Pkcs7),
            Err(DecryptError::Length)
        );
        assert_eq!(
            unpad(vec![1, 2, 3, 0], Padding::Pkcs7),
            Err(DecryptError::Padding)
        );
        assert_eq!(
            unpad(vec![1, 2, 2, 3], Padding::Pkcs7),
            Err(DecryptError::Padding)
        );
        assert_eq!(unpad(vec![9, 2, 2], Padding::Pkcs7), Ok(vec![9]));
        let mut block32 = vec![7u8];
        block32.extend([20u8; 20]);
        assert_eq!(
            unpad(block32.clone(), Padding::Pkcs7),
            Err(DecryptError::Padding)
        );
        assert_eq!(unpad(block32, Padding::Pkcs7Block32), Ok(vec![7]));
    }
}
