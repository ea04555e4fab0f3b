//! Users, roles and the server side of SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, reference §3).
//!
//! Owns credential derivation (only salted keys are kept, never the password), the SASL
//! conversation state of one connection and the privilege check. It must not log or return
//! secrets, and it must not know about sockets.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::{CmdResult, CommandError};

/// Iteration count used for both mechanisms (the minimum drivers accept; keeps tests fast).
pub const ITERATIONS: u32 = 4096;

/// SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// SCRAM-SHA-1.
    Sha1,
    /// SCRAM-SHA-256.
    Sha256,
}

impl Mechanism {
    /// Parses the `mechanism` field.
    pub fn parse(s: &str) -> CmdResult<Self> {
        match s {
            "SCRAM-SHA-1" => Ok(Self::Sha1),
            "SCRAM-SHA-256" => Ok(Self::Sha256),
            other => Err(CommandError::new(
                334,
                format!("Received authentication for mechanism {other} which is not enabled"),
            )),
        }
    }
}

#[derive(Clone)]
struct Keys {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// A role grant: role name on a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Role name (`root`, `read`, `readWrite`, `readAnyDatabase`, `readWriteAnyDatabase`,
    /// `backup`, `clusterMonitor`, `dbAdmin`).
    pub role: String,
    /// Database the role applies to.
    pub db: String,
}

/// A user defined at start-up (all users live in `admin`).
#[derive(Clone)]
pub struct User {
    /// User name.
    pub name: String,
    /// Granted roles.
    pub roles: Vec<Role>,
    sha1: Keys,
    sha256: Keys,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

// HMAC accepts keys of any length; this is never reached.
fn unreachable_hmac<T>() -> T {
    unreachable!("hmac accepts keys of any length")
}

fn derive(mech: Mechanism, user: &str, password: &str) -> Keys {
    let mut salt = vec![0u8; if mech == Mechanism::Sha1 { 16 } else { 28 }];
    rand::thread_rng().fill_bytes(&mut salt);
    match mech {
        Mechanism::Sha1 => {
            let digest = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
            let p = crate::store::hex(&digest);
            let mut salted = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<Sha1>(p.as_bytes(), &salt, ITERATIONS, &mut salted);
            let client_key = hmac_sha1(&salted, b"Client Key");
            Keys {
                stored_key: Sha1::digest(&client_key).to_vec(),
                server_key: hmac_sha1(&salted, b"Server Key"),
                salt,
            }
        }
        Mechanism::Sha256 => {
            let mut salted = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
            let client_key = hmac_sha256(&salted, b"Client Key");
            Keys {
                stored_key: Sha256::digest(&client_key).to_vec(),
                server_key: hmac_sha256(&salted, b"Server Key"),
                salt,
            }
        }
    }
}

impl User {
    /// Derives the SCRAM keys of a user; the password is not kept.
    pub fn new(name: &str, password: &str, roles: Vec<Role>) -> Self {
        Self {
            name: name.to_string(),
            roles,
            sha1: derive(Mechanism::Sha1, name, password),
            sha256: derive(Mechanism::Sha256, name, password),
        }
    }

    fn keys(&self, mech: Mechanism) -> &Keys {
        match mech {
            Mechanism::Sha1 => &self.sha1,
            Mechanism::Sha256 => &self.sha256,
        }
    }

    fn has(&self, f: impl Fn(&Role) -> bool) -> bool {
        self.roles.iter().any(f)
    }

    /// Whether the user may run a command of `class` on database `db`.
    pub fn allowed(&self, class: Privilege, db: &str) -> bool {
        if self.has(|r| r.role == "root" || r.role == "__system") {
            return true;
        }
        let internal = db == "local" || db == "config";
        let read_any = self.has(|r| {
            matches!(
                r.role.as_str(),
                "readAnyDatabase" | "readWriteAnyDatabase" | "dbAdminAnyDatabase"
            )
        }) && !internal
            || self.has(|r| r.role == "backup");
        let write_any = self.has(|r| r.role == "readWriteAnyDatabase") && !internal;
        let on_db = |names: &[&str]| self.has(|r| r.db == db && names.contains(&r.role.as_str()));
        match class {
            Privilege::None => true,
            Privilege::Read => read_any || on_db(&["read", "readWrite", "dbAdmin", "dbOwner"]),
            Privilege::Write => write_any || on_db(&["readWrite", "dbOwner"]),
            Privilege::Cluster => self.has(|r| {
                matches!(
                    r.role.as_str(),
                    "clusterMonitor"
                        | "clusterAdmin"
                        | "backup"
                        | "readAnyDatabase"
                        | "readWriteAnyDatabase"
                )
            }),
            Privilege::Root => false,
        }
    }
}

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Allowed for any authenticated user.
    None,
    /// Read on the target database.
    Read,
    /// Write on the target database.
    Write,
    /// Cluster monitoring (serverStatus, replSetGetStatus, listDatabases with sizes).
    Cluster,
    /// Only root (applyOps, test commands).
    Root,
}

/// An in-progress SASL conversation of one connection.
#[derive(Debug, Clone)]
pub struct Conversation {
    mech: Mechanism,
    user: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    skip_empty_exchange: bool,
    /// Set once the proof was verified (only the empty final exchange remains).
    verified: bool,
}

fn auth_failed() -> CommandError {
    CommandError::new(18, "Authentication failed.")
}

fn parse_attrs(s: &str) -> Vec<(char, &str)> {
    s.split(',')
        .filter_map(|p| {
            let mut chars = p.chars();
            let k = chars.next()?;
            p.get(2..).map(|v| (k, v))
        })
        .collect()
}

/// Handles `saslStart`; returns the conversation and the server-first payload.
pub fn sasl_start(
    users: &[User],
    mech: Mechanism,
    payload: &[u8],
    skip_empty_exchange: bool,
) -> CmdResult<(Conversation, Vec<u8>)> {
    let text = std::str::from_utf8(payload).map_err(|_| auth_failed())?;
    let bare = text
        .strip_prefix("n,,")
        .or_else(|| text.strip_prefix("y,,"))
        .ok_or_else(|| CommandError::bad_value("SCRAM channel binding is not supported"))?;
    let attrs = parse_attrs(bare);
    let user = attrs
        .iter()
        .find(|(k, _)| *k == 'n')
        .map(|(_, v)| v.replace("=2C", ",").replace("=3D", "="))
        .ok_or_else(auth_failed)?;
    let client_nonce = attrs
        .iter()
        .find(|(k, _)| *k == 'r')
        .map(|(_, v)| v.to_string())
        .ok_or_else(auth_failed)?;
    let u = users
        .iter()
        .find(|u| u.name == user)
        .ok_or_else(auth_failed)?;
    let mut server_nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut server_nonce);
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!(
        "r={nonce},s={},i={ITERATIONS}",
        B64.encode(&u.keys(mech).salt)
    );
    let conv = Conversation {
        mech,
        user,
        client_first_bare: bare.to_string(),
        server_first: server_first.clone(),
        nonce,
        skip_empty_exchange,
        verified: false,
    };
    Ok((conv, server_first.into_bytes()))
}

/// Outcome of one `saslContinue`.
#[derive(Debug)]
pub struct Step {
    /// Reply payload.
    pub payload: Vec<u8>,
    /// `done` flag.
    pub done: bool,
    /// Authenticated user name when the conversation completed.
    pub authenticated: Option<String>,
}

fn sha1_digest(k: &[u8]) -> Vec<u8> {
    Sha1::digest(k).to_vec()
}

fn sha256_digest(k: &[u8]) -> Vec<u8> {
    Sha256::digest(k).to_vec()
}

/// Handles `saslContinue`.
pub fn sasl_continue(users: &[User], conv: &mut Conversation, payload: &[u8]) -> CmdResult<Step> {
    if conv.verified {
        return Ok(Step {
            payload: Vec::new(),
            done: true,
            authenticated: Some(conv.user.clone()),
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| auth_failed())?;
    let (without_proof, proof_b64) = text.rsplit_once(",p=").ok_or_else(auth_failed)?;
    let attrs = parse_attrs(without_proof);
    let nonce = attrs
        .iter()
        .find(|(k, _)| *k == 'r')
        .map(|(_, v)| *v)
        .ok_or_else(auth_failed)?;
    if nonce != conv.nonce {
        return Err(auth_failed());
    }
    let proof = B64.decode(proof_b64).map_err(|_| auth_failed())?;
    let u = users
        .iter()
        .find(|u| u.name == conv.user)
        .ok_or_else(auth_failed)?;
    let keys = u.keys(conv.mech);
    let auth_message = format!(
        "{},{},{}",
        conv.client_first_bare, conv.server_first, without_proof
    );
    let (client_sig, server_sig, stored) = match conv.mech {
        Mechanism::Sha1 => (
            hmac_sha1(&keys.stored_key, auth_message.as_bytes()),
            hmac_sha1(&keys.server_key, auth_message.as_bytes()),
            sha1_digest as fn(&[u8]) -> Vec<u8>,
        ),
        Mechanism::Sha256 => (
            hmac_sha256(&keys.stored_key, auth_message.as_bytes()),
            hmac_sha256(&keys.server_key, auth_message.as_bytes()),
            sha256_digest as fn(&[u8]) -> Vec<u8>,
        ),
    };
    if proof.len() != client_sig.len() {
        return Err(auth_failed());
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_sig).map(|(a, b)| a ^ b).collect();
    if stored(&client_key) != keys.stored_key {
        return Err(auth_failed());
    }
    conv.verified = true;
    let payload = format!("v={}", B64.encode(server_sig)).into_bytes();
    Ok(Step {
        payload,
        done: conv.skip_empty_exchange,
        authenticated: if conv.skip_empty_exchange {
            Some(conv.user.clone())
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal client side of SCRAM-SHA-256 for the round trip.
    fn client_final(server_first: &str, bare: &str, password: &str) -> String {
        let attrs = parse_attrs(server_first);
        let get = |c: char| {
            attrs
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| *v)
                .unwrap()
        };
        let salt = B64.decode(get('s')).unwrap();
        let iters: u32 = get('i').parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
        let ck = hmac_sha256(&salted, b"Client Key");
        let sk = Sha256::digest(&ck);
        let without = format!("c=biws,r={}", get('r'));
        let am = format!("{bare},{server_first},{without}");
        let sig = hmac_sha256(&sk, am.as_bytes());
        let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    #[test]
    fn scram_sha256_round_trip_and_bad_password() {
        let users = vec![User::new("root", "secret", vec![])];
        let bare = "n=root,r=abcdefgh";
        for (pw, ok) in [("secret", true), ("wrong", false)] {
            let (mut conv, sf) = sasl_start(
                &users,
                Mechanism::Sha256,
                format!("n,,{bare}").as_bytes(),
                true,
            )
            .unwrap();
            let sf = String::from_utf8(sf).unwrap();
            let cf = client_final(&sf, bare, pw);
            let r = sasl_continue(&users, &mut conv, cf.as_bytes());
            if ok {
                let step = r.unwrap();
                assert!(step.done);
                assert_eq!(step.authenticated.as_deref(), Some("root"));
            } else {
                assert_eq!(r.unwrap_err().code, 18);
            }
        }
        assert_eq!(
            sasl_start(&users, Mechanism::Sha256, b"n,,n=nobody,r=x", true)
                .unwrap_err()
                .code,
            18
        );
    }

    #[test]
    fn debug_redacts_credentials() {
        let u = User::new("root", "secret", vec![]);
        assert!(!format!("{u:?}").contains("secret"));
    }
}
