//! Components: the host services a cell may be given. A cell gets only those its
//! config names; a WASI call into one it lacks answers `notcapable`, and what the
//! runtime keeps for a component (buffers, memory) is left out of a cell without it.

/// A set of components, as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Components(pub u32);

impl Components {
    /// None.
    pub const NONE: Self = Self(0);
    /// Stdin, stdout and stderr.
    pub const STDIO: Self = Self(1 << 0);
    /// The program's arguments.
    pub const ARGS: Self = Self(1 << 1);
    /// The program's environment.
    pub const ENV: Self = Self(1 << 2);
    /// Clocks, and sleeping on them.
    pub const CLOCKS: Self = Self(1 << 3);
    /// Random bytes.
    pub const RANDOM: Self = Self(1 << 4);
    /// Files: the preopened directories and what is opened under them.
    pub const FS: Self = Self(1 << 5);
    /// Sockets: named so that a module importing them is refused by name; no cell
    /// can be given them yet.
    pub const NET: Self = Self(1 << 6);
    /// Named channels: the channels granted to the cell, opened by name under the
    /// `/channels` directory (see [`crate::channel`]).
    pub const CHANNELS: Self = Self(1 << 7);
    /// Every component a cell can be given: a cell's default.
    pub const ALL: Self = Self(
        Self::STDIO.0
            | Self::ARGS.0
            | Self::ENV.0
            | Self::CLOCKS.0
            | Self::RANDOM.0
            | Self::FS.0
            | Self::CHANNELS.0,
    );

    /// The components a cell can be given, by name, in the order they are listed.
    pub const NAMES: [(&'static str, Self); 7] = [
        ("stdio", Self::STDIO),
        ("args", Self::ARGS),
        ("env", Self::ENV),
        ("clocks", Self::CLOCKS),
        ("random", Self::RANDOM),
        ("fs", Self::FS),
        ("channels", Self::CHANNELS),
    ];

    /// Whether every component of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether this set and `other` share a component.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Both sets together.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The component named `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, component)| component)
    }

    /// The name of a single component (`net` included).
    pub fn name(self) -> Option<&'static str> {
        if self == Self::NET {
            return Some("net");
        }
        Self::NAMES
            .iter()
            .find(|&&(_, component)| component == self)
            .map(|&(name, _)| name)
    }

    /// Only the bits of components that exist: what a cell can be given.
    pub const fn known(self) -> Self {
        Self(self.0 & Self::ALL.0)
    }
}

/// What a WASI function needs of a cell's components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: the program's own control (exit, yield), and questions whose honest
    /// answer without files is "no such descriptor" (the preopens).
    Nothing,
    /// This component.
    Component(Components),
    /// Its first parameter is a descriptor: stdio for a stdio stream, channels for a
    /// named channel, files for any other.
    Descriptor,
    /// Its first parameter is a directory to open in: channels for the `/channels`
    /// directory, files for any other.
    Directory,
    /// `poll_oneoff`: clocks for a clock subscription, and a descriptor's component for
    /// a descriptor's.
    Poll,
}

impl Needs {
    /// The components a module that imports the function may use through it: the
    /// cell must have at least one of them for the import to be of any use.
    pub const fn any_of(self) -> Components {
        match self {
            Self::Nothing => Components::NONE,
            Self::Component(component) => component,
            Self::Descriptor => Components::STDIO
                .union(Components::FS)
                .union(Components::CHANNELS),
            Self::Directory => Components::FS.union(Components::CHANNELS),
            Self::Poll => Components::CLOCKS
                .union(Components::STDIO)
                .union(Components::FS)
                .union(Components::CHANNELS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_cover_all() {
        let mut all = Components::NONE;
        for (name, component) in Components::NAMES {
            assert_eq!(Components::named(name), Some(component));
            assert_eq!(component.name(), Some(name));
            all = all.union(component);
        }
        assert_eq!(all, Components::ALL);
        assert!(!Components::ALL.contains(Components::NET));
        assert_eq!(
            Components::named("net"),
            None,
            "no cell can be given sockets"
        );
        assert_eq!(Components(u32::MAX).known(), Components::ALL);
    }
}
