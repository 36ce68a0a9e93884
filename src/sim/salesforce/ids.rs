//! Salesforce record ids: 15-character case-sensitive ids and their 18-character case-safe form.
//!
//! Layout of a 15-character id: a 3-character key prefix naming the object, 2 characters for the
//! instance, 1 reserved character, and 9 base-62 characters. The 18-character form appends a
//! 3-character checksum that encodes which of the first 15 characters are upper case, so the id
//! survives case-insensitive systems (spreadsheets, some databases).

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Pod and reserved characters of every id this emulator makes.
const INSTANCE: &str = "5g0";

/// The three checksum characters for a 15-character id.
pub fn checksum(id15: &str) -> String {
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let flags = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            SUFFIX[flags] as char
        })
        .collect()
}

/// The 18-character id of `prefix` with sequence number `n`. Ascending `n` gives ascending ids
/// in byte order, which is how the emulator orders by `Id`.
pub fn make(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(rest % 62) as usize];
        rest /= 62;
    }
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.push_str(INSTANCE);
    id.extend(digits.iter().map(|&b| b as char));
    let suffix = checksum(&id);
    id.push_str(&suffix);
    id
}

/// The canonical 18-character form of an id given in 15 or 18 characters, or `None` when it is
/// not shaped like an id. An 18-character id has its case restored from the checksum, as
/// Salesforce does, so a lower-cased copy still names the same record.
pub fn normalize(input: &str) -> Option<String> {
    if !input.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match input.len() {
        15 => {
            let suffix = checksum(input);
            Some(format!("{input}{suffix}"))
        }
        18 => {
            let (body, suffix) = input.split_at(15);
            let mut restored = String::with_capacity(18);
            for (chunk_index, chunk) in body.as_bytes().chunks(5).enumerate() {
                let flag_char = suffix.as_bytes()[chunk_index].to_ascii_uppercase();
                let flags = SUFFIX.iter().position(|&c| c == flag_char)?;
                for (i, &c) in chunk.iter().enumerate() {
                    let upper = flags & (1 << i) != 0;
                    if upper && !c.is_ascii_alphabetic() {
                        return None;
                    }
                    restored.push(if upper {
                        c.to_ascii_uppercase() as char
                    } else {
                        c.to_ascii_lowercase() as char
                    });
                }
            }
            let suffix = checksum(&restored);
            restored.push_str(&suffix);
            Some(restored)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_fifteen_character_id_gets_its_documented_checksum() {
        // Worked by hand: chunk "001A0" has bit 3 set (I), "00000" none (A), "6Vm9r" bit 1 (C).
        assert_eq!(checksum("001A0000006Vm9r"), "IAC");
        assert_eq!(checksum("00D000000000000"), "EAA");
        let org = crate::sim::salesforce::ORG_ID;
        assert_eq!(normalize(org).as_deref(), Some(org));
        let user = crate::sim::salesforce::store::SIM_USER_ID;
        assert_eq!(normalize(user).as_deref(), Some(user));
        assert_eq!(
            normalize("001A0000006Vm9r").as_deref(),
            Some("001A0000006Vm9rIAC")
        );
    }

    #[test]
    fn made_ids_are_eighteen_characters_with_the_prefix_and_a_valid_checksum() {
        let id = make("500", 1);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("500"));
        assert_eq!(normalize(&id).as_deref(), Some(id.as_str()));
        assert_eq!(normalize(&id[..15]).as_deref(), Some(id.as_str()));
    }

    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = [1u64, 9, 10, 35, 36, 61, 62, 3_844, 1_000_000]
            .iter()
            .map(|&n| make("001", n))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn a_lower_cased_eighteen_character_id_is_restored_from_its_checksum() {
        let id = make("003", 123_456_789);
        assert_eq!(normalize(&id.to_lowercase()).as_deref(), Some(id.as_str()));
    }

    #[test]
    fn things_that_are_not_ids_are_refused() {
        assert_eq!(normalize("500"), None);
        assert_eq!(normalize("500-5g000000000"), None);
        assert_eq!(normalize("5005g0000000001AAA5"), None);
    }
}
