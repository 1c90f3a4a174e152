-- The room Wavelet talks privately to a person in, per platform and account. A chat
-- adapter records it before anything is sent there and reuses it after any restart, so
-- a person keeps one direct room (a platform's own list of a bot's direct rooms may be
-- written later than the room is made, or brought back only by the first sync).
CREATE TABLE direct_rooms (
    platform TEXT NOT NULL,
    account TEXT NOT NULL,
    room TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (platform, account)
);
