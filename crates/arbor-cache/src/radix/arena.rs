//! Storage for radix nodes: a slab of slots addressed by index, with a generation per
//! slot so that a [`NodeId`] kept past its node's eviction is recognised as stale instead
//! of silently naming whatever node reused the slot.

use std::collections::BTreeMap;

use crate::PageId;

/// Handle to one radix node: an edge of the tree holding a run of tokens and their pages.
///
/// A handle stays valid while its node is in the tree. Locked nodes are never evicted, so
/// a handle the engine has locked stays valid until it unlocks it. Splitting a node keeps
/// the handle on the part that ends where the node ended, so a locked handle always pins
/// the same prefix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    index: u32,
    generation: u32,
}

/// One radix node. The root is a node with an empty run and no parent.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Index of the parent node; `None` only for the root.
    pub parent: Option<u32>,
    /// The node's run of token ids, a whole number of pages long (empty for the root).
    pub tokens: Vec<u32>,
    /// The pages storing the run's KV, `tokens.len() / page_size` of them, in order. The
    /// tree holds one reference on each.
    pub pages: Vec<PageId>,
    /// Children keyed by the token ids of their first page. Two children never share a
    /// first page, because a shared first page would have been one node.
    pub children: BTreeMap<Box<[u32]>, u32>,
    /// Locks held on this node or any descendant; the node is evictable only at 0.
    pub lock_count: u32,
    /// Logical time of the last match or insert whose path went through this node.
    pub last_access: u64,
}

impl Node {
    pub fn new(parent: Option<u32>, tokens: Vec<u32>, pages: Vec<PageId>, now: u64) -> Self {
        Self {
            parent,
            tokens,
            pages,
            children: BTreeMap::new(),
            lock_count: 0,
            last_access: now,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    generation: u32,
    node: Option<Node>,
}

/// The slab of nodes. Indices of removed nodes are reused; generations tell them apart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arena {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    n_live: usize,
}

impl Arena {
    /// Stores `node` and returns its index.
    pub fn insert(&mut self, node: Node) -> u32 {
        self.n_live += 1;
        if let Some(index) = self.vacant.pop() {
            self.slots[index as usize].node = Some(node);
            return index;
        }
        let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 radix nodes");
        self.slots.push(Slot {
            generation: 0,
            node: Some(node),
        });
        index
    }

    /// Takes the node out and retires its handle.
    pub fn remove(&mut self, index: u32) -> Node {
        let slot = &mut self.slots[index as usize];
        let node = slot.node.take().expect("removed radix node is live");
        slot.generation = slot.generation.wrapping_add(1);
        self.vacant.push(index);
        self.n_live -= 1;
        node
    }

    pub fn get(&self, index: u32) -> &Node {
        self.slots[index as usize]
            .node
            .as_ref()
            .expect("radix node index refers to a live node")
    }

    pub fn get_mut(&mut self, index: u32) -> &mut Node {
        self.slots[index as usize]
            .node
            .as_mut()
            .expect("radix node index refers to a live node")
    }

    /// The handle for the live node at `index`.
    pub fn id(&self, index: u32) -> NodeId {
        NodeId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// The index a handle names, or `None` if its node has been removed.
    pub fn resolve(&self, id: NodeId) -> Option<u32> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.generation == id.generation && slot.node.is_some()).then_some(id.index)
    }

    /// Live nodes, the root included.
    pub fn n_live(&self) -> usize {
        self.n_live
    }
}
