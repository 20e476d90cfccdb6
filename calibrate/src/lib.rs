//! oats-calibrate: measures every exported configuration (see issue 5). Not yet implemented.
