//! The two classes, as a type: the API, the store, the logs and training all say "cat" or
//! "dog" through [`Label`], never through string literals.
use std::fmt;
use std::str::FromStr;

/// What a photo shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Cat,
    Dog,
}

/// A string that names neither class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown label {0:?} (expected cat or dog)")]
pub struct UnknownLabel(pub String);

impl Label {
    /// Both classes, in class-index order.
    pub const ALL: [Label; 2] = [Label::Cat, Label::Dog];

    /// The class index the networks use: cat 0, dog 1 (P(dog) is the positive class).
    pub const fn index(self) -> u8 {
        match self {
            Label::Cat => 0,
            Label::Dog => 1,
        }
    }

    /// The class of index 0 or 1; `None` for anything else.
    pub const fn from_index(i: u8) -> Option<Self> {
        match i {
            0 => Some(Label::Cat),
            1 => Some(Label::Dog),
            _ => None,
        }
    }

    /// The answer at the 0.5 threshold on P(dog).
    pub fn from_p_dog(p_dog: f32) -> Self {
        if p_dog >= 0.5 { Label::Dog } else { Label::Cat }
    }

    /// Lower-case name, as stored and served: "cat" or "dog".
    pub const fn as_str(self) -> &'static str {
        match self {
            Label::Cat => "cat",
            Label::Dog => "dog",
        }
    }

    /// Capitalised name, as the seed's `prediction` field and the page show it.
    pub const fn title(self) -> &'static str {
        match self {
            Label::Cat => "Cat",
            Label::Dog => "Dog",
        }
    }

    /// The other class.
    pub const fn other(self) -> Self {
        match self {
            Label::Cat => Label::Dog,
            Label::Dog => Label::Cat,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Label {
    type Err = UnknownLabel;
    /// Accepts "cat"/"dog" in any case (the seed's clients send "Cat" and "Dog").
    fn from_str(s: &str) -> Result<Self, UnknownLabel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cat" => Ok(Label::Cat),
            "dog" => Ok(Label::Dog),
            _ => Err(UnknownLabel(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices_round_trip() {
        for l in Label::ALL {
            assert_eq!(l.as_str().parse::<Label>(), Ok(l));
            assert_eq!(l.title().parse::<Label>(), Ok(l));
            assert_eq!(Label::from_index(l.index()), Some(l));
            assert_eq!(serde_json::to_string(&l).ok(), Some(format!("\"{l}\"")));
        }
        assert!("fox".parse::<Label>().is_err());
        assert_eq!(Label::from_p_dog(0.5), Label::Dog);
        assert_eq!(Label::from_p_dog(0.49), Label::Cat);
    }
}
