//! The KV block pool's bookkeeping (the memory itself belongs to the step function):
//! which blocks are free, how many sequences reference each block, and the prefix
//! cache — full blocks keyed by the hash chain of the tokens up to and including them,
//! as vLLM does, so a new sequence whose prompt starts with the same tokens reuses
//! their KV instead of recomputing it.
//!
//! Free blocks wait in one queue ordered for eviction: blocks that hold no cached
//! prefix go first, then cached ones from the least recently released. A cached block
//! is taken off the queue when a sequence reuses it, and loses its cache entry when it
//! is handed out for new content. A block referenced by more than one sequence is
//! never written: [`BlockPool::writable`] copies it first (copy-on-write).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// What a cached block holds: the chain hash before it and its tokens (compared on
/// every lookup, so a hash collision never returns a block of other tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedKey {
    parent: u64,
    tokens: Vec<u32>,
}

/// The block manager.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    /// The chain hash of a block registered in the prefix cache.
    hash: Vec<Option<u64>>,
    /// Chain hash -> (block, its key).
    cached: HashMap<u64, (u32, CachedKey)>,
    /// Unreferenced blocks by eviction order (smallest key first).
    free: BTreeMap<u64, u32>,
    /// Each block's key in `free` (None while referenced).
    free_key: Vec<Option<u64>>,
    /// Next keys at the back (cached blocks) and the front (plain blocks).
    back: u64,
    front: u64,
    /// Prefix-cache lookups and hits (full blocks).
    pub queries: u64,
    /// Hits.
    pub hits: u64,
}

/// The hash of a full block given the chain hash before it (0 for the first block).
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same chain in every run and every process.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    // 0 stands for "no parent"; keep real hashes away from it.
    h.finish() | 1
}

impl BlockPool {
    /// `n` free blocks of `block_size` tokens.
    pub fn new(n: usize, block_size: usize) -> BlockPool {
        let mid = 1u64 << 62;
        let mut p = BlockPool {
            block_size,
            refs: vec![0; n],
            hash: vec![None; n],
            cached: HashMap::new(),
            free: BTreeMap::new(),
            free_key: vec![None; n],
            back: mid,
            front: mid - 1,
            queries: 0,
            hits: 0,
        };
        for b in 0..n as u32 {
            p.push_back(b);
        }
        p
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence references (free or cached).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks some sequence references.
    pub fn num_used(&self) -> usize {
        self.total() - self.num_free()
    }

    /// Unreferenced blocks that still hold a cached prefix.
    pub fn num_cached_free(&self) -> usize {
        self.free
            .values()
            .filter(|&&b| self.hash[b as usize].is_some())
            .count()
    }

    /// The reference count of `b`.
    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    fn push_back(&mut self, b: u32) {
        let k = self.back;
        self.back += 1;
        self.free.insert(k, b);
        self.free_key[b as usize] = Some(k);
    }

    fn push_front(&mut self, b: u32) {
        let k = self.front;
        self.front -= 1;
        self.free.insert(k, b);
        self.free_key[b as usize] = Some(k);
    }

    fn take_free(&mut self, b: u32) {
        if let Some(k) = self.free_key[b as usize].take() {
            self.free.remove(&k);
        }
    }

    /// A block for new content (reference count 1), evicting the least valuable free
    /// block; None when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let (&k, &b) = self.free.iter().next()?;
        self.free.remove(&k);
        self.free_key[b as usize] = None;
        if let Some(h) = self.hash[b as usize].take() {
            self.cached.remove(&h);
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more reference to `b`.
    pub fn incref(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.take_free(b);
        }
        self.refs[b as usize] += 1;
    }

    /// Drops one reference to `b`; at zero the block becomes free (kept for the prefix
    /// cache when it holds a registered prefix).
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "block {b} released more often than referenced");
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r == 0 {
            if self.hash[b as usize].is_some() {
                self.push_back(b);
            } else {
                self.push_front(b);
            }
        }
    }

    /// The cached block for the full block `tokens` after the chain `parent`, with a
    /// new reference taken; counts the query.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        self.queries += 1;
        let h = chain_hash(parent, tokens);
        let (b, key) = self.cached.get(&h)?;
        if key.parent != parent || key.tokens != tokens {
            return None;
        }
        let b = *b;
        self.hits += 1;
        self.incref(b);
        Some((b, h))
    }

    /// Registers the full block `b` (holding `tokens` after the chain `parent`) in the
    /// prefix cache; returns its chain hash. A chain already cached in another block
    /// keeps that block.
    pub fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let h = chain_hash(parent, tokens);
        if self.hash[b as usize].is_none() && !self.cached.contains_key(&h) {
            self.hash[b as usize] = Some(h);
            let key = CachedKey {
                parent,
                tokens: tokens.to_vec(),
            };
            self.cached.insert(h, (b, key));
        }
        h
    }

    /// A block the caller may write in place of `b`: `b` itself when only the caller
    /// references it and it holds no cached prefix, else a new block (the caller's
    /// reference to `b` moves to it) and the copy `(b, new)` to make first. None when
    /// no block is free.
    pub fn writable(&mut self, b: u32) -> Option<(u32, Option<(u32, u32)>)> {
        if self.refs[b as usize] == 1 && self.hash[b as usize].is_none() {
            return Some((b, None));
        }
        let n = self.allocate()?;
        self.release(b);
        Some((n, Some((b, n))))
    }

    /// Checks the internal invariants against the references the caller holds
    /// (`held[b]` = how many times sequences hold block `b`): counts match, free blocks
    /// are exactly the unreferenced ones, every cache entry points at a block with that
    /// hash. For tests.
    pub fn check(&self, held: &[u32]) -> Result<(), String> {
        if held.len() != self.refs.len() {
            return Err("held has the wrong length".into());
        }
        for (b, (&r, &h)) in self.refs.iter().zip(held).enumerate() {
            if r != h {
                return Err(format!("block {b}: {r} references counted, {h} held"));
            }
            if (r == 0) != self.free_key[b].is_some() {
                return Err(format!(
                    "block {b}: refs {r} but free = {:?}",
                    self.free_key[b]
                ));
            }
        }
        if self.free.len() != self.refs.iter().filter(|&&r| r == 0).count() {
            return Err("free queue length differs from unreferenced blocks".into());
        }
        for (h, (b, _)) in &self.cached {
            if self.hash[*b as usize] != Some(*h) {
                return Err(format!(
                    "cache entry {h:x} points at block {b} of another hash"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_reuse_a_cached_prefix() {
        let mut p = BlockPool::new(4, 2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let h1 = p.register(a, 0, &[1, 2]);
        p.register(b, h1, &[3, 4]);
        assert_eq!(p.num_used(), 2);
        p.release(a);
        p.release(b);
        assert_eq!(p.num_cached_free(), 2);
        // The same prefix comes back from the cache.
        let (a2, h) = p.lookup(0, &[1, 2]).unwrap();
        assert_eq!((a2, h), (a, h1));
        assert!(p.lookup(h1, &[3, 5]).is_none());
        assert_eq!((p.queries, p.hits), (2, 1));
        // Plain free blocks are handed out before cached ones.
        let c = p.allocate().unwrap();
        let d = p.allocate().unwrap();
        assert!(c != b && d != b && c != a && d != a);
        // Now the cached block b is evicted for new content.
        assert_eq!(p.allocate(), Some(b));
        assert!(p.lookup(h1, &[3, 4]).is_none());
        assert_eq!(p.allocate(), None);
        let mut held = vec![0; 4];
        for x in [a, b, c, d] {
            held[x as usize] = 1;
        }
        p.check(&held).unwrap();
    }

    #[test]
    fn shared_blocks_are_copied_before_a_write() {
        let mut p = BlockPool::new(3, 4);
        let a = p.allocate().unwrap();
        assert_eq!(p.writable(a), Some((a, None)));
        p.incref(a);
        let (n, copy) = p.writable(a).unwrap();
        assert_ne!(n, a);
        assert_eq!(copy, Some((a, n)));
        assert_eq!((p.refs(a), p.refs(n)), (1, 1));
    }
}
